//! Report text: the labeler (entities, assertion scopes), the section parser and the IU X-ray
//! report XML parser, on arbitrary (lossily decoded) text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let labels = medvlp_data::text::labels::label_report(&text);
    assert!(labels.values().all(|v| matches!(v, -1..=1)));
    let _ = medvlp_data::dataset::sections::parse_sections(&text);
    let _ = medvlp_data::dataset::iu_xray::parse_report(&text, &Default::default());
});
