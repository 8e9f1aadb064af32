//! `medvlp eval zero-shot|linear-probe|finetune|retrieval|all --model DIR --data MANIFEST`:
//! the field's evaluation protocols. Writes `results.jsonl` (one JSON object per metric),
//! `summary.md` and ROC / Recall@K plots (SVG and PNG) into `--out`.
//!
//! Only the flags live here: they become a [`medvlp_eval::EvalOptions`], and
//! [`medvlp_train::evaluate::evaluate_model`] runs the protocols (`medvlp_eval::protocols`).

use anyhow::Result;
use medvlp_eval::options::parse_split;
use medvlp_eval::results::Task;
use medvlp_eval::zeroshot::PromptMode;
use medvlp_eval::EvalOptions;
use medvlp_train::evaluate::evaluate_model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub task: EvalTask,
}

#[derive(clap::Subcommand)]
pub enum EvalTask {
    /// Zero-shot classification from prompt files (per-class and macro AUROC, N-way accuracy).
    ZeroShot(Common),
    /// Logistic regression on frozen image embeddings at 1%, 10% and 100% of the training labels.
    LinearProbe(Common),
    /// Fine-tune the image encoder with a linear head at each label fraction.
    Finetune(Common),
    /// Image->report and report->image retrieval (R@K, mean/median rank, Precision@K by label).
    Retrieval(Common),
    /// Zero-shot, linear probe and retrieval (and fine-tuning with --with-finetune).
    All(Common),
}

impl EvalTask {
    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            EvalTask::ZeroShot(c)
            | EvalTask::LinearProbe(c)
            | EvalTask::Finetune(c)
            | EvalTask::Retrieval(c)
            | EvalTask::All(c) => c,
        }
    }
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// medvlp model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// JSONL manifest (`medvlp prepare` or `medvlp synth`).
    #[arg(long)]
    pub data: PathBuf,
    /// Image root for relative paths (default: the manifest's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Split evaluated (train and validate are used by the probes).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Zero-shot prompt file (path or shipped name, see `medvlp prompts list`).
    #[arg(long, default_value = "chexpert5")]
    pub prompts: String,
    /// Prompt modes for zero-shot.
    #[arg(long, value_delimiter = ',', default_value = "pos_neg,ensemble,single")]
    pub modes: Vec<String>,
    /// Studies per class of the N-way zero-shot task (5x200 style).
    #[arg(long, default_value_t = 200)]
    pub nway_per_class: usize,
    /// Label fractions of the probes.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,1.0")]
    pub fractions: Vec<f64>,
    /// Classes of the probes (default: the prompt file's classes).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Retrieval candidate pool (default: the whole split).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Report text used for retrieval.
    #[arg(long, value_enum, default_value = "report")]
    pub text_field: TextFieldArg,
    /// Bootstrap resamples for the 95% confidence intervals (0 = none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Include fine-tuning in `eval all`.
    #[arg(long)]
    pub with_finetune: bool,
    /// Embed with bf16 products (bf16 operands, f32 accumulation; AVX-512 BF16 where the CPU has it).
    #[arg(long)]
    pub bf16: bool,
    /// Output folder.
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
}

/// Which report text stands for a study ([`medvlp_eval::TextField`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TextFieldArg {
    /// `text`, else findings + impression.
    Report,
    Impression,
    Findings,
}

impl From<TextFieldArg> for medvlp_eval::TextField {
    fn from(t: TextFieldArg) -> Self {
        match t {
            TextFieldArg::Report => medvlp_eval::TextField::Report,
            TextFieldArg::Impression => medvlp_eval::TextField::Impression,
            TextFieldArg::Findings => medvlp_eval::TextField::Findings,
        }
    }
}

impl Common {
    /// The evaluation options of these flags (all but `--model` and `--with-finetune`).
    pub fn options(&self) -> Result<EvalOptions> {
        Ok(EvalOptions {
            data: self.data.clone(),
            root: self.root.clone(),
            split: parse_split(&self.split)?,
            prompts: self.prompts.clone(),
            modes: self.modes.iter().map(|m| PromptMode::parse(m)).collect::<Result<_>>()?,
            nway_per_class: self.nway_per_class,
            fractions: self.fractions.clone(),
            classes: self.classes.clone(),
            pool: self.pool,
            text_field: self.text_field.into(),
            bootstrap: self.bootstrap,
            seed: self.seed,
            batch_size: self.batch_size,
            epochs: self.epochs,
            bf16: self.bf16,
            device: self.device.clone(),
            out: self.out.clone(),
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let (which, c) = match args.task {
        EvalTask::ZeroShot(c) => (vec![Task::ZeroShot], c),
        EvalTask::LinearProbe(c) => (vec![Task::LinearProbe], c),
        EvalTask::Finetune(c) => (vec![Task::Finetune], c),
        EvalTask::Retrieval(c) => (vec![Task::Retrieval], c),
        EvalTask::All(c) => {
            let mut t = vec![Task::ZeroShot, Task::LinearProbe, Task::Retrieval];
            if c.with_finetune {
                t.push(Task::Finetune);
            }
            (t, c)
        }
    };
    let opts = c.options()?;
    let records = evaluate_model(&c.model, &opts, &which)?;
    print!("{}", medvlp_eval::results::markdown_summary(&records));
    eprintln!("results in {}", opts.out.join("results.jsonl").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use medvlp_data::dataset::Split;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        task: EvalTask,
    }

    fn common(args: &[&str]) -> Common {
        let cli = Cli::try_parse_from([&["eval"], args].concat()).unwrap();
        match cli.task {
            EvalTask::ZeroShot(c) | EvalTask::All(c) => c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_become_options() {
        let o = common(&["zero-shot", "--model", "m", "--data", "d/m.jsonl"]).options().unwrap();
        assert_eq!(
            o,
            EvalOptions {
                data: "d/m.jsonl".into(),
                root: None,
                split: Split::Test,
                prompts: "chexpert5".into(),
                modes: vec![PromptMode::PosNeg, PromptMode::Ensemble, PromptMode::Single],
                nway_per_class: 200,
                fractions: vec![0.01, 0.1, 1.0],
                classes: vec![],
                pool: None,
                text_field: medvlp_eval::TextField::Report,
                bootstrap: 1000,
                seed: 0,
                batch_size: 64,
                epochs: 5,
                bf16: false,
                device: "cpu".into(),
                out: "eval".into(),
            }
        );
        assert_eq!(o.image_root(), PathBuf::from("d"));
        let o = common(&[
            "all",
            "--model",
            "m",
            "--data",
            "m.jsonl",
            "--split",
            "val",
            "--modes",
            "single",
            "--text-field",
            "impression",
            "--classes",
            "Edema,Mass",
            "--pool",
            "10",
        ])
        .options()
        .unwrap();
        assert_eq!(o.split, Split::Validate);
        assert_eq!(o.modes, [PromptMode::Single]);
        assert_eq!(o.text_field, medvlp_eval::TextField::Impression);
        assert_eq!((o.classes.len(), o.pool), (2, Some(10)));
        let bad = common(&["zero-shot", "--model", "m", "--data", "d", "--split", "nope"]);
        assert!(format!("{:#}", bad.options().unwrap_err()).contains("nope"));
        let bad = common(&["zero-shot", "--model", "m", "--data", "d", "--modes", "best"]);
        assert!(format!("{:#}", bad.options().unwrap_err()).contains("best"));
    }
}
