//! `medvlp bench data`: decode + preprocess throughput (generated 2500x2000 JPEG and the RG1
//! DICOM, to 224 px, 1 core and all cores) and the `prepare` scale test on a generated
//! MIMIC-CXR-sized tree.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use medvlp_data::bench::{decode_throughput, generate_mimic_tree, peak_rss_mib, synthetic_jpeg};
use medvlp_data::dataset::{prepare, PrepareOptions};
use medvlp_data::image::preprocess::{CropMode, PreprocessConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images per measurement.
    #[arg(long, default_value_t = 40)]
    pub n: usize,
    /// A DICOM to time (default: $MEDVLP_ASSETS/dicom/RG1_UNCR.dcm when set).
    #[arg(long)]
    pub dicom: Option<PathBuf>,
    /// Studies in the generated MIMIC-like tree (0 skips the prepare benchmark).
    #[arg(long, default_value_t = 227_827)]
    pub studies: usize,
    /// Where to generate benchmark files (removed afterwards). Default: the system temp dir.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Skip the decode benchmarks.
    #[arg(long)]
    pub skip_decode: bool,
}

pub fn run(args: Args) -> Result<()> {
    let base = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("medvlp-bench-data").tempdir_in(&base)?;
    let cfg = PreprocessConfig { crop: CropMode::Center, ..Default::default() };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if !args.skip_decode {
        let jpg = dir.path().join("synthetic_2500x2000.jpg");
        std::fs::write(&jpg, synthetic_jpeg(2500, 2000, 90)?)?;
        let mut targets = vec![(jpg, "JPEG 2500x2000 (8-bit gray, q90)".to_string())];
        let dicom = args.dicom.clone().or_else(|| {
            std::env::var_os("MEDVLP_ASSETS").map(|a| PathBuf::from(a).join("dicom/RG1_UNCR.dcm"))
        });
        match dicom {
            Some(d) if d.is_file() => targets
                .push((d.clone(), format!("DICOM {}", d.file_name().unwrap().to_string_lossy()))),
            _ => println!("(no DICOM: pass --dicom or set MEDVLP_ASSETS)"),
        }
        for (path, what) in &targets {
            for threads in [1, cores] {
                let t = decode_throughput(path, what, &cfg, args.n, threads)?;
                println!(
                    "decode+preprocess -> {}px  {:<40} threads {:>2}: {:>7.1} images/s ({:.1} per core)",
                    cfg.image_size,
                    t.what,
                    t.threads,
                    t.images_per_s,
                    t.images_per_s / threads as f64
                );
            }
        }
    }
    if args.studies > 0 {
        let root = dir.path().join("mimic");
        let t = Instant::now();
        let (studies, images) = generate_mimic_tree(&root, args.studies)?;
        println!(
            "generated MIMIC-like tree: {studies} studies, {images} images in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let s = prepare(PrepareOptions::new("mimic", &root, root.join("manifest.jsonl")))?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "prepare mimic: {} studies, {} images, {} patients in {:.1}s ({:.0} studies/s); peak RSS {:.0} MiB",
            s.studies,
            s.images,
            s.patients,
            secs,
            s.studies as f64 / secs,
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
