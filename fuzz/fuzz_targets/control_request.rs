//! A control-socket request line: whatever a local client sends (the server reads one
//! line of UTF-8, at most 1 KiB). It parses or is refused with a message; a request that
//! parses prints back to a line that parses to the same request.

#![no_main]

use gerbang::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server's `read_line` refuses anything that is not UTF-8 before parsing.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match Request::parse(line) {
        Ok(request) => {
            let printed = request.to_line();
            assert_eq!(
                Request::parse(&printed).as_ref(),
                Ok(&request),
                "{line:?} printed as {printed:?}"
            );
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
