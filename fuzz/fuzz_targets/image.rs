//! PNG and JPEG: the `image` crate's decoders, the truncation check and the DCT-scaled JPEG
//! path (first byte picks full or scaled decoding).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let path = Path::new("fuzz.img");
    let r = if mode & 1 == 0 {
        medvlp_data::image::decode_bytes(bytes, path)
    } else {
        medvlp_data::image::decode_bytes_scaled(bytes, path, Some(1 + (mode as u32 >> 1)))
    };
    match r {
        Ok(d) => assert!(d.image.data.iter().all(|v| v.is_finite())),
        Err(e) => assert!(e.to_string().contains("fuzz.img"), "{e}"),
    }
});
