//! DICOM: the length walk, dicom-rs' parser and every pixel decoder behind it (native,
//! JPEG baseline/lossless, JPEG 2000, RLE). The `.dcm` name routes preamble-less bytes to DICOM.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = medvlp_data::image::decode_bytes(data, Path::new("fuzz.dcm")) {
        assert!(e.to_string().contains("fuzz.dcm"), "{e}");
    }
});
