//! What gerbang may do: checking, before anything else, that it can load and attach XDP;
//! and once it runs, keeping only the capabilities the running controller uses.
//!
//! # Start and run
//!
//! Start-up needs root's networking and BPF capabilities: loading the XDP program and its
//! maps (CAP_BPF, CAP_PERFMON for the verifier's pointer rules, CAP_NET_ADMIN for an XDP
//! program), attaching it and pinning it on bpffs (mounting bpffs needs CAP_SYS_ADMIN, where
//! nothing mounted it), opening VRRP's raw and packet sockets (CAP_NET_RAW), binding the
//! proxy's listeners and the status page to ports below 1024 (CAP_NET_BIND_SERVICE).
//!
//! Once [`crate::controller::Controller::start`] has returned, all of that is done, and
//! what the controller still does needs far less ([`runtime_needs`]):
//!
//! - the XDP data plane: managed neighbour entries for backends' next hops, added as
//!   backends come and go and removed at stop (CAP_NET_ADMIN). Everything else goes through
//!   BPF descriptors it already holds: map updates and reads, attaching the loaded program
//!   to an interface a reload adds (a BPF link) and pinning it, detaching. Linux 6.5 and
//!   later check no capability for those (only creating maps and loading programs); older
//!   kernels refuse every bpf() call without CAP_BPF while
//!   `kernel.unprivileged_bpf_disabled` is set, so there CAP_BPF stays
//!   ([`bpf_calls_need_cap_bpf`] tries it);
//! - VRRP: adding and removing the virtual addresses (CAP_NET_ADMIN); its raw and packet
//!   sockets are open, and sending on them needs nothing;
//! - the userspace proxy: binding the listeners of services a reload adds or moves, which
//!   on ports below 1024 needs CAP_NET_BIND_SERVICE; forwarding needs nothing;
//! - reading the configuration file and password files again on reload, and the control
//!   socket: files owned by root, which gerbang still is (uid 0), so no CAP_DAC_OVERRIDE.
//!
//! Configuration changes that would need more (`dataplane.mode`, `flow_table_size`,
//! `[http]`, `[[vrrp]]`) apply only at the next start.
//!
//! # The drop
//!
//! [`restrict`] sets the permitted and effective sets to what is kept, clears the
//! inheritable and ambient sets, removes everything else from the bounding set and sets
//! `no_new_privs`, in every thread of the process: capabilities are per thread, and the
//! tokio runtime's threads already run. The other threads do it in a signal handler, as
//! glibc does for `setuid`; `/proc/self/task/*/status` then confirms every thread.
//!
//! VRRP notify commands and track scripts run as root with the kept set only: an executed
//! program's capabilities come from the bounding set, and `no_new_privs` stops set-user-ID
//! and file-capability programs from gaining more. A script that needs another capability
//! gets it with `gerbang run --keep-capability CAP_...`.

use std::{
    collections::BTreeMap,
    fmt,
    sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst},
    time::{Duration, Instant},
};

use std::os::fd::{AsRawFd as _, FromRawFd as _};

use anyhow::{Context as _, Result, anyhow, bail};

/// Capability numbers from linux/capability.h, with their names.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability(u8);

impl Capability {
    pub const SETPCAP: Self = Self(8);
    pub const NET_BIND_SERVICE: Self = Self(10);
    pub const NET_ADMIN: Self = Self(12);
    pub const NET_RAW: Self = Self(13);
    pub const SYS_ADMIN: Self = Self(21);
    pub const PERFMON: Self = Self(38);
    pub const BPF: Self = Self(39);

    /// `CAP_NET_ADMIN`, `NET_ADMIN` or `net_admin`.
    pub fn parse(name: &str) -> Result<Capability> {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        NAMES
            .iter()
            .position(|n| *n == full)
            .map(|i| Capability(i as u8))
            .ok_or_else(|| anyhow!("unknown capability {name:?}: use a name such as CAP_NET_RAW"))
    }

    pub fn name(self) -> &'static str {
        NAMES.get(usize::from(self.0)).copied().unwrap_or("CAP_?")
    }

    fn bit(self) -> u64 {
        1 << self.0
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.get(usize::from(self.0)) {
            Some(name) => f.write_str(name),
            None => write!(f, "cap_{}", self.0),
        }
    }
}

/// A set of capabilities, as the kernel's 64-bit masks hold them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: Self = Self(0);

    pub fn of(caps: &[Capability]) -> Self {
        Self(caps.iter().fold(0, |mask, cap| mask | cap.bit()))
    }

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Capability> {
        (0..64u8).map(Capability).filter(move |c| self.contains(*c))
    }
}

impl fmt::Display for CapSet {
    /// `CAP_NET_ADMIN,CAP_BPF`, or `(none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(none)");
        }
        for (i, cap) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cap}")?;
        }
        Ok(())
    }
}

/// Fails with one paragraph saying what to do when gerbang cannot load and attach XDP.
pub fn check() -> Result<()> {
    let effective = thread_state("self")
        .map(|s| s.effective)
        .unwrap_or_default();
    if effective.contains(Capability::NET_ADMIN)
        && (effective.contains(Capability::BPF) || effective.contains(Capability::SYS_ADMIN))
    {
        return Ok(());
    }
    bail!(
        "gerbang needs root to load its XDP program and attach it to network interfaces \
         (precisely: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON). Run it as root, for example \
         `sudo gerbang run --config /etc/gerbang/gerbang.toml`; `gerbang check-config FILE` \
         works without privileges"
    )
}

/// What the running controller does that needs a capability, given what it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// The XDP data plane (not the userspace proxy).
    pub xdp: bool,
    /// At least one VRRP instance.
    pub vrrp: bool,
    /// This kernel refuses every bpf() call, map updates on open descriptors included, to
    /// a thread without CAP_BPF ([`bpf_calls_need_cap_bpf`]).
    pub bpf_calls_need_cap_bpf: bool,
}

/// The capabilities the running controller needs, each with why.
pub fn runtime_needs(running: Running) -> BTreeMap<Capability, Vec<&'static str>> {
    let mut needs: BTreeMap<Capability, Vec<&'static str>> = BTreeMap::new();
    if running.xdp {
        // Attaching the loaded program to an interface a reload adds (a BPF link), pinning
        // it, detaching, and every map access go through descriptors gerbang holds, which
        // Linux 6.5 and later allow without a capability; netlink's neighbour table does
        // not.
        needs
            .entry(Capability::NET_ADMIN)
            .or_default()
            .push("managed neighbours for backends' next hops");
        if running.bpf_calls_need_cap_bpf {
            needs
                .entry(Capability::BPF)
                .or_default()
                .push("BPF map updates (this kernel checks every bpf() call)");
        }
    }
    if !running.xdp {
        needs
            .entry(Capability::NET_BIND_SERVICE)
            .or_default()
            .push("proxy listeners a reload adds on ports below 1024");
    }
    if running.vrrp {
        needs
            .entry(Capability::NET_ADMIN)
            .or_default()
            .push("VRRP virtual addresses");
    }
    needs
}

/// Whether this kernel refuses bpf() calls on descriptors already open (a map lookup) to
/// a thread without CAP_BPF. Before Linux 6.5 every bpf() command needs CAP_BPF (or
/// CAP_SYS_ADMIN) while `kernel.unprivileged_bpf_disabled` is set, as distributions set
/// it; since 6.5 only creating maps and loading programs do.
///
/// Tried rather than guessed from the version: a scratch thread creates a one-entry map,
/// lowers its own effective set to nothing and looks the entry up. When the probe itself
/// cannot run, the answer is yes.
pub fn bpf_calls_need_cap_bpf() -> bool {
    std::thread::spawn(probe_map_access)
        .join()
        .unwrap_or(Err(0))
        .is_err()
}

/// In a thread of its own (its capabilities are lowered): `Err(errno)` if the lookup is
/// refused, or the probe could not run.
fn probe_map_access() -> Result<(), i32> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    #[repr(C)]
    struct Lookup {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let map = create_probe_map()?;
    lower_effective_here()?;
    let (key, mut value) = (0u32, 0u32);
    let lookup = Lookup {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: bpf(2) reads the key and writes the 4-byte value through these pointers.
    let looked = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &lookup,
            std::mem::size_of::<Lookup>() as libc::c_uint,
        )
    };
    if looked != 0 {
        return Err(errno());
    }
    Ok(())
}

fn errno() -> i32 {
    // SAFETY: errno is thread-local and always readable.
    unsafe { *libc::__errno_location() }
}

/// A one-entry BPF array map (needs CAP_BPF).
fn create_probe_map() -> Result<std::os::fd::OwnedFd, i32> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    // SAFETY: bpf(2) reads `size_of::<MapCreate>()` bytes of `create`; the kernel zeroes
    // the rest of its attribute union.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create,
            std::mem::size_of::<MapCreate>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Empties the calling thread's effective set (its permitted set stays).
fn lower_effective_here() -> Result<(), i32> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget writes two data structs; capset reads them. Only this thread changes.
    unsafe {
        if libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) != 0 {
            return Err(errno());
        }
        data[0].effective = 0;
        data[1].effective = 0;
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// What [`restrict`] left, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restricted {
    /// Permitted and effective, in every thread.
    pub kept: CapSet,
    /// The bounding set afterwards: `kept`, unless gerbang could not change it (started
    /// without CAP_SETPCAP), when it is what it was.
    pub bounding: CapSet,
    /// Capabilities asked for that this process did not have to begin with.
    pub missing: CapSet,
    /// Threads that took the drop.
    pub threads: usize,
    /// Threads that block signals and so kept their capabilities: not gerbang's (tokio and
    /// the standard library block none), but an emulator's, as qemu-user's own thread.
    /// `"TID (NAME)"`; empty when gerbang runs natively.
    pub unreachable: Vec<String>,
}

/// Keeps `keep` (as far as this process has it) and drops every other capability in every
/// thread: permitted, effective, inheritable, ambient and, with CAP_SETPCAP, bounding; then
/// sets `no_new_privs`. See the module documentation.
pub fn restrict(keep: CapSet) -> Result<Restricted> {
    let before = thread_state("self").context("reading this process's capabilities")?;
    let missing = keep.difference(before.permitted);
    let keep = keep.intersection(before.permitted);
    let bounding_extra = before.bounding.difference(keep);
    // Dropping from the bounding set needs CAP_SETPCAP; without it (a service manager
    // already narrowed the set), no_new_privs still keeps executed programs to `keep`.
    let drop_bounding = if before.effective.contains(Capability::SETPCAP) {
        bounding_extra
    } else {
        CapSet::EMPTY
    };
    let target = Target {
        keep,
        bounding: before.bounding.difference(drop_bounding),
    };
    KEEP.store(keep.0, SeqCst);
    DROP_BOUNDING.store(drop_bounding.0, SeqCst);
    ARMED.store(true, SeqCst);
    let result = apply_everywhere(&target);
    ARMED.store(false, SeqCst);
    let (threads, unreachable) = result?;
    Ok(Restricted {
        kept: keep,
        bounding: target.bounding,
        missing,
        threads,
        unreachable,
    })
}

/// What every thread must show once done.
struct Target {
    keep: CapSet,
    bounding: CapSet,
}

impl Target {
    fn reached(&self, state: &ThreadState) -> bool {
        state.effective == self.keep
            && state.permitted == self.keep
            && state.inheritable.is_empty()
            && state.ambient.is_empty()
            && state.bounding == self.bounding
            && state.no_new_privs
    }
}

/// How long the other threads get to run the handler, per round (they take microseconds).
const ROUND_TIMEOUT: Duration = Duration::from_millis(500);
/// Threads started during a round by a thread not yet done inherit the old set: another
/// round catches them.
const ROUNDS: usize = 4;

/// Runs the drop on every thread until all of them show it. Returns how many did, and the
/// threads that block signals and never did (see [`Restricted::unreachable`]); any other
/// thread left out is an error.
fn apply_everywhere(target: &Target) -> Result<(usize, Vec<String>)> {
    let signal = install_handler()?;
    // SAFETY: getpid and gettid cannot fail.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    for _ in 0..ROUNDS {
        let pending = pending(target)?;
        if pending.is_empty() {
            break;
        }
        ACKS.store(0, SeqCst);
        ERROR.store(0, SeqCst);
        let mut signalled = 0;
        for tid in pending {
            if tid == me {
                apply_here().map_err(|errno| {
                    anyhow!(
                        "dropping capabilities: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )
                })?;
                continue;
            }
            // SAFETY: a plain syscall; a thread that has exited gives ESRCH.
            if unsafe { libc::tgkill(pid, tid, signal) } == 0 {
                signalled += 1;
            }
        }
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while ACKS.load(SeqCst) < signalled && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let errno = ERROR.load(SeqCst);
        if errno != 0 {
            bail!(
                "dropping capabilities in a thread: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }
    // A thread blocks every signal only for moments (glibc's posix_spawn does, around
    // the clone), which a round outlasts; one that still does is not a thread of ours.
    let mut unreachable = Vec::new();
    let mut stragglers = Vec::new();
    for tid in pending(target)? {
        let task = format!("/proc/self/task/{tid}");
        let status = std::fs::read_to_string(format!("{task}/status")).unwrap_or_default();
        let blocks = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|mask| mask != 0);
        let name = std::fs::read_to_string(format!("{task}/comm")).unwrap_or_default();
        let described = format!("{tid} ({})", name.trim());
        if blocks {
            unreachable.push(described);
        } else {
            stragglers.push(described);
        }
    }
    if !stragglers.is_empty() {
        bail!(
            "threads {} still hold capabilities after {ROUNDS} rounds",
            stragglers.join(", ")
        );
    }
    Ok((threads()?.len() - unreachable.len(), unreachable))
}

/// This process's threads that have not reached `target` yet.
fn pending(target: &Target) -> Result<Vec<libc::pid_t>> {
    Ok(threads()?
        .into_iter()
        // A thread gone since the listing has nothing left to do.
        .filter(|tid| thread_state(&tid.to_string()).is_some_and(|s| !target.reached(&s)))
        .collect())
}

/// Set while a drop is under way: a stray signal later does nothing.
static ARMED: AtomicBool = AtomicBool::new(false);
static KEEP: AtomicU64 = AtomicU64::new(0);
static DROP_BOUNDING: AtomicU64 = AtomicU64::new(0);
/// Threads that ran the handler this round.
static ACKS: AtomicUsize = AtomicUsize::new(0);
/// The first errno a handler met this round, or 0.
static ERROR: AtomicI32 = AtomicI32::new(0);
/// The signal, once the handler is installed (it stays: nothing else uses the signal,
/// and a late delivery must not find the default action, which kills).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the handler on a real-time signal glibc leaves to applications.
fn install_handler() -> Result<libc::c_int> {
    let installed = SIGNAL.load(SeqCst);
    if installed != 0 {
        return Ok(installed);
    }
    let signal = libc::SIGRTMIN() + 6;
    // SAFETY: sigaction with a zeroed (empty mask) struct and a handler that only makes
    // async-signal-safe system calls and touches atomics.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            bail!("reading the action of signal {signal}");
        }
        if old.sa_sigaction != libc::SIG_DFL {
            bail!("signal {signal} is already in use in this process");
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            bail!(
                "installing a handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    SIGNAL.store(signal, SeqCst);
    Ok(signal)
}

extern "C" fn on_signal(_: libc::c_int) {
    if !ARMED.load(SeqCst) {
        return;
    }
    // SAFETY: errno is this thread's; the interrupted code must find it unchanged.
    let errno = unsafe { *libc::__errno_location() };
    if let Err(error) = apply_here() {
        let _ = ERROR.compare_exchange(0, error, SeqCst, SeqCst);
    }
    ACKS.fetch_add(1, SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two, for capabilities 0-31 and 32-63.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The drop, in the calling thread. Only system calls: it runs in a signal handler.
fn apply_here() -> Result<(), i32> {
    let keep = KEEP.load(SeqCst);
    let drop_bounding = DROP_BOUNDING.load(SeqCst);
    for cap in 0..64u64 {
        if drop_bounding & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(errno());
            }
        }
    }
    // Before Linux 4.3 there is no ambient set, and nothing to clear.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads the header and two data structs, which outlive the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// The threads of this process.
fn threads() -> Result<Vec<libc::pid_t>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// One thread's capability sets and `no_new_privs`, as /proc shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    pub inheritable: CapSet,
    pub permitted: CapSet,
    pub effective: CapSet,
    pub bounding: CapSet,
    pub ambient: CapSet,
    pub no_new_privs: bool,
}

impl ThreadState {
    /// Parses the `Cap*:` and `NoNewPrivs:` lines of a `/proc/.../status` file.
    pub fn parse(status: &str) -> Option<ThreadState> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let mask = |name: &str| {
            field(name)
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .map(CapSet)
        };
        Some(ThreadState {
            inheritable: mask("CapInh:")?,
            permitted: mask("CapPrm:")?,
            effective: mask("CapEff:")?,
            bounding: mask("CapBnd:")?,
            // Absent before Linux 4.3.
            ambient: mask("CapAmb:").unwrap_or_default(),
            no_new_privs: field("NoNewPrivs:") == Some("1"),
        })
    }
}

/// The state of thread `tid` of this process (`"self"`: the calling thread).
fn thread_state(tid: &str) -> Option<ThreadState> {
    let path = if tid == "self" {
        "/proc/thread-self/status".to_string()
    } else {
        format!("/proc/self/task/{tid}/status")
    };
    ThreadState::parse(&std::fs::read_to_string(path).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (i, name) in NAMES.iter().enumerate() {
            let cap = Capability::parse(name).unwrap();
            assert_eq!(usize::from(cap.0), i);
            assert_eq!(cap.name(), *name);
        }
        assert_eq!(Capability::parse("net_raw").unwrap(), Capability::NET_RAW);
        assert_eq!(Capability::parse(" BPF ").unwrap(), Capability::BPF);
        assert!(Capability::parse("CAP_FLY").is_err());
        assert_eq!(
            CapSet::of(&[Capability::BPF, Capability::NET_ADMIN]).to_string(),
            "CAP_NET_ADMIN,CAP_BPF"
        );
        assert_eq!(CapSet::EMPTY.to_string(), "(none)");
    }

    #[test]
    fn needs_follow_what_runs() {
        let set = |xdp, vrrp, bpf_calls_need_cap_bpf| {
            let running = Running {
                xdp,
                vrrp,
                bpf_calls_need_cap_bpf,
            };
            CapSet::of(&runtime_needs(running).into_keys().collect::<Vec<_>>())
        };
        let net_admin = CapSet::of(&[Capability::NET_ADMIN]);
        let bind = CapSet::of(&[Capability::NET_BIND_SERVICE]);
        assert_eq!(set(true, false, false), net_admin);
        assert_eq!(set(true, true, false), net_admin);
        assert_eq!(
            set(true, false, true),
            CapSet::of(&[Capability::NET_ADMIN, Capability::BPF])
        );
        assert_eq!(set(false, true, false), net_admin.union(bind));
        assert_eq!(set(false, true, true), net_admin.union(bind));
        assert_eq!(set(false, false, true), bind);
    }

    /// Linux 6.5 and later let a thread without capabilities use a map it holds; this
    /// machine's kernel is newer. As root only: creating the map needs CAP_BPF.
    #[test]
    fn map_access_without_cap_bpf_on_this_kernel() {
        let me = thread_state("self").unwrap();
        if !me.effective.contains(Capability::BPF) {
            eprintln!("skipped: needs CAP_BPF to create the probe map");
            return;
        }
        if let Err(errno) = create_probe_map() {
            // qemu-user has no bpf(2): the probe answers "needed", which is the safe way.
            eprintln!("skipped: no BPF map here (errno {errno})");
            assert!(bpf_calls_need_cap_bpf());
            return;
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut version = release.trim().split(['.', '-']).map(|n| n.parse::<u32>());
        let (major, minor) = (version.next(), version.next());
        let (Some(Ok(major)), Some(Ok(minor))) = (major, minor) else {
            return;
        };
        let gated = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
            .is_ok_and(|v| v.trim() != "0");
        let expected = (major, minor) < (6, 5) && gated;
        assert_eq!(
            bpf_calls_need_cap_bpf(),
            expected,
            "Linux {}",
            release.trim()
        );
        // The probe lowered its own thread's set only.
        assert_eq!(thread_state("self").unwrap(), me);
    }

    /// Set in the child process that [`restrict_reaches_every_thread`] starts.
    const CHILD: &str = "GERBANG_PRIVILEGES_TEST_CHILD";

    /// The drop cannot be undone, so it runs in a child: this test binary again, running
    /// only [`restrict_in_child`].
    #[test]
    #[cfg_attr(
        any(target_arch = "arm", target_arch = "aarch64"),
        ignore = "the cross targets' tests run under qemu-user, which cannot start the child"
    )]
    fn restrict_reaches_every_thread() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privileges::tests::restrict_in_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{said}");
        assert!(said.contains("1 passed"), "{said}");
    }

    #[test]
    #[ignore = "run by restrict_reaches_every_thread, in a child process"]
    fn restrict_in_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        use std::sync::{Arc, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        // Threads busy in sleeps, as runtime workers parked in epoll are.
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    thread_state("self").unwrap()
                })
            })
            .collect();
        let before = thread_state("self").unwrap();
        let wanted = CapSet::of(&[Capability::NET_ADMIN]);
        let restricted = restrict(wanted).unwrap();
        let kept = wanted.intersection(before.permitted);
        assert_eq!(restricted.kept, kept);
        assert!(restricted.threads >= 5, "{restricted:?}");
        if before.effective.contains(Capability::SETPCAP) {
            assert_eq!(restricted.bounding, kept);
        }
        stop.store(true, SeqCst);
        for worker in workers {
            let state = worker.join().unwrap();
            assert_eq!(state.effective, kept);
            assert_eq!(state.permitted, kept);
            assert_eq!(state.bounding, restricted.bounding);
            assert!(state.no_new_privs);
        }
        // A thread started afterwards inherits the drop.
        let late = std::thread::spawn(|| thread_state("self").unwrap())
            .join()
            .unwrap();
        assert_eq!(late.effective, kept);
        assert!(late.no_new_privs);
        // A program run now gets nothing more, even as root.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let child = std::process::Command::new("cat")
            .arg("/proc/self/status")
            .output()
            .unwrap();
        let child = ThreadState::parse(&String::from_utf8_lossy(&child.stdout)).unwrap();
        assert_eq!(child.effective, kept, "{status}");
        assert_eq!(child.bounding, restricted.bounding);
    }

    #[test]
    fn status_lines_parse() {
        let status = "Name:\tgerbang\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n\
                      CapEff:\t0000000000001000\nCapBnd:\t0000008000001000\n\
                      CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let state = ThreadState::parse(status).unwrap();
        assert_eq!(state.effective, CapSet::of(&[Capability::NET_ADMIN]));
        assert_eq!(
            state.bounding,
            CapSet::of(&[Capability::NET_ADMIN, Capability::BPF])
        );
        assert!(state.no_new_privs);
        assert_eq!(ThreadState::parse("Name:\tx\n"), None);
    }
}
