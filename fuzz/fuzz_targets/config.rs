//! The configuration file: any bytes, through the same path `gerbang run` and
//! `gerbang check-config` take. A file is accepted or rejected with at least one problem,
//! each rendered as `file:line:column: field: message`; nothing panics.
//!
//! Valid UTF-8 goes straight to `Config::parse`; anything else through `Config::load`,
//! which reports where the text stops being UTF-8.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use gerbang::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = match std::str::from_utf8(data) {
        Ok(text) => Config::parse(text, "<fuzz>"),
        Err(_) => {
            let path = scratch_file();
            std::fs::write(path, data).expect("writing the scratch config");
            Config::load(path)
        }
    };
    match result {
        Ok(config) => {
            assert!(!config.services.is_empty(), "a config without services passed");
            let _ = format!("{config:?}");
        }
        Err(error) => check_error(&error),
    }
});

fn check_error(error: &ConfigError) {
    assert!(!error.problems().is_empty(), "an error without problems");
    let rendered = error.to_string();
    assert!(
        rendered.lines().count() >= error.problems().len(),
        "{rendered}"
    );
}

/// One file per fuzzing process (libFuzzer's -fork/-jobs run several).
fn scratch_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("gerbang-fuzz-config-{}.toml", std::process::id()))
    })
}
