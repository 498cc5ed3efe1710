//! Any text given as a spec gets a spec or `file:line` problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = tributary_spec::parse_spec("fuzz.yaml", &text) {
        assert!(!e.report().is_empty());
    }
});
