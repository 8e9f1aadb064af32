//! The JSONL manifest reader: every line is a study or an error naming file and line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medvlp_data::dataset::manifest::ManifestReader;

fuzz_target!(|data: &[u8]| {
    for r in ManifestReader::new(std::io::Cursor::new(data), "fuzz.jsonl") {
        if let Err(e) = r {
            assert!(e.to_string().contains("fuzz.jsonl:"), "{e}");
        }
    }
});
