//! Text tokenizer: Hugging Face `tokenizer.json` (any WordPiece/BPE tokenizer the `tokenizers`
//! crate reads), batch encoding with attention masks and word offsets, and WordPiece training.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Normalizer, OffsetReferential, OffsetType, PaddingDirection, PaddingParams,
    PaddingStrategy, PreTokenizedString, PreTokenizer, TruncationParams,
};

pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A batch of encoded texts, padded to the longest sequence, row-major `[batch, len]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub len: usize,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// Per token: index of the word it belongs to (`None` for special and padding tokens).
    pub word_ids: Vec<Option<u32>>,
    /// Per token: byte offsets `(start, end)` into the original text (`(0, 0)` for specials/padding).
    pub offsets: Vec<(usize, usize)>,
    /// Per token: 1 for [CLS]/[SEP]/padding.
    pub special_mask: Vec<u32>,
}

impl Batch {
    pub fn row<'a, T>(&self, v: &'a [T], i: usize) -> &'a [T] {
        &v[i * self.len..(i + 1) * self.len]
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    max_length: usize,
    pub pad_id: u32,
    pub mask_id: u32,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
}

fn find_id(t: &tokenizers::Tokenizer, names: &[&str]) -> Option<u32> {
    names.iter().find_map(|n| t.token_to_id(n))
}

/// Truncation at `max_length` and right padding to the batch's longest sequence, replacing any
/// baked into the file.
fn batch_padding(
    inner: &mut tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
    pad_token: String,
) -> Result<()> {
    inner
        .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
        .map_err(|e| anyhow!("setting truncation: {e}"))?;
    inner.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token,
    }));
    Ok(())
}

impl Tokenizer {
    /// Load `tokenizer.json`. Any truncation or padding baked into the file is replaced: sequences
    /// are truncated to `max_length` and a batch is padded to its longest sequence.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        Self::from_tokenizer(inner, max_length)
            .with_context(|| format!("tokenizer {}", path.display()))
    }

    pub fn from_tokenizer(mut inner: tokenizers::Tokenizer, max_length: usize) -> Result<Self> {
        let pad_id = find_id(&inner, &["[PAD]", "<pad>"])
            .ok_or_else(|| anyhow!("no [PAD] token in the vocabulary"))?;
        let pad_token = inner.id_to_token(pad_id).unwrap_or_else(|| "[PAD]".into());
        let mask_id = find_id(&inner, &["[MASK]", "<mask>"])
            .ok_or_else(|| anyhow!("no [MASK] token in the vocabulary"))?;
        let cls_id = find_id(&inner, &["[CLS]", "<s>"]);
        let sep_id = find_id(&inner, &["[SEP]", "</s>"]);
        batch_padding(&mut inner, max_length, pad_id, pad_token)?;
        Ok(Self { inner, max_length, pad_id, mask_id, cls_id, sep_id })
    }

    /// For embedding only (no masked-language modelling): padding is `[PAD]`, `<pad>` or CLIP's
    /// `<|endoftext|>`, else id 0 (the text encoders read the attention mask, never the pad id);
    /// the mask id is unused and set to the pad id.
    pub fn for_inference(mut inner: tokenizers::Tokenizer, max_length: usize) -> Result<Self> {
        let pad_id = find_id(&inner, &["[PAD]", "<pad>", "<|endoftext|>"]).unwrap_or(0);
        let pad_token = inner.id_to_token(pad_id).unwrap_or_default();
        let cls_id = find_id(&inner, &["[CLS]", "<s>", "<|startoftext|>"]);
        let sep_id = find_id(&inner, &["[SEP]", "</s>", "<|endoftext|>"]);
        batch_padding(&mut inner, max_length, pad_id, pad_token)?;
        Ok(Self { inner, max_length, pad_id, mask_id: pad_id, cls_id, sep_id })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encode texts with special tokens, truncated and padded to the batch's longest sequence.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Batch> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let len = enc.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut b = Batch {
            batch: enc.len(),
            len,
            input_ids: Vec::with_capacity(enc.len() * len),
            attention_mask: Vec::with_capacity(enc.len() * len),
            token_type_ids: Vec::with_capacity(enc.len() * len),
            word_ids: Vec::with_capacity(enc.len() * len),
            offsets: Vec::with_capacity(enc.len() * len),
            special_mask: Vec::with_capacity(enc.len() * len),
        };
        for e in &enc {
            if e.len() != len {
                bail!("tokenizer returned ragged batch ({} vs {len})", e.len());
            }
            b.input_ids.extend_from_slice(e.get_ids());
            b.attention_mask.extend_from_slice(e.get_attention_mask());
            b.token_type_ids.extend_from_slice(e.get_type_ids());
            b.word_ids.extend_from_slice(e.get_word_ids());
            b.offsets.extend_from_slice(e.get_offsets());
            b.special_mask.extend_from_slice(e.get_special_tokens_mask());
        }
        Ok(b)
    }

    /// Save as `tokenizer.json` with this tokenizer's truncation and padding.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| anyhow!("saving tokenizer {}: {e}", path.display()))
    }
}

/// Options for training a WordPiece vocabulary.
#[derive(Clone, Debug)]
pub struct WordPieceOptions {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub lowercase: bool,
    /// Cap on the initial character alphabet (rare characters become [UNK]).
    pub limit_alphabet: usize,
}

impl Default for WordPieceOptions {
    fn default() -> Self {
        Self { vocab_size: 8000, min_frequency: 2, lowercase: true, limit_alphabet: 1000 }
    }
}

/// Train a BERT-style WordPiece tokenizer (BERT normaliser and pre-tokeniser, `[CLS] ... [SEP]`
/// post-processing, special tokens `[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4`) on text files
/// (one report per line), and write it as `tokenizer.json`.
///
/// Trains a WordPiece vocabulary (see [`train_wordpiece`]) on the training-split reports of
/// `manifests` (a study's `text`, else its findings and impression) and writes it to `out`.
/// Returns the number of reports.
pub fn train_on_manifests(
    manifests: &[&Path],
    opts: &WordPieceOptions,
    out: &Path,
) -> Result<usize> {
    use crate::dataset::{read_manifest, Split};
    let mut n = 0;
    let mut text = String::new();
    for m in manifests {
        for s in read_manifest(m)?.iter().filter(|s| s.split.is_none_or(|sp| sp == Split::Train)) {
            if let Some(t) = s.text.clone().or_else(|| s.findings_impression()) {
                text.push_str(&t.replace('\n', " "));
                text.push('\n');
                n += 1;
            }
        }
    }
    if n == 0 {
        let names: Vec<String> = manifests.iter().map(|m| m.display().to_string()).collect();
        bail!("no training-split reports in {} to train a vocabulary on", names.join(", "));
    }
    let corpus = tempfile::NamedTempFile::new().context("creating a temporary corpus file")?;
    std::fs::write(corpus.path(), text).context("writing the tokenizer corpus")?;
    train_wordpiece(&[corpus.path()], opts, out)?;
    Ok(n)
}

/// The vocabulary is learned here rather than with `tokenizers`' `WordPieceTrainer`: that trainer
/// iterates hash maps with random seeds, so two runs on the same corpus give different
/// vocabularies (and ids), which breaks run-to-run determinism. This is the same algorithm (BPE
/// merges over word counts with `##` continuation pieces), with every tie broken by the token
/// strings, so the result depends on the corpus only.
pub fn train_wordpiece(files: &[&Path], opts: &WordPieceOptions, out: &Path) -> Result<Tokenizer> {
    if opts.vocab_size < SPECIAL_TOKENS.len() + 10 {
        bail!("vocab size {} is too small", opts.vocab_size);
    }
    let normalizer = BertNormalizer::new(true, true, Some(opts.lowercase), opts.lowercase);
    let mut counts: HashMap<String, u64> = HashMap::new();
    for f in files {
        let meta = std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?;
        if meta.len() == 0 {
            bail!("{} is empty: nothing to train a vocabulary on", f.display());
        }
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading {} (UTF-8 text expected)", f.display()))?;
        for line in text.lines() {
            let mut pre = PreTokenizedString::from(line);
            pre.normalize(|n| normalizer.normalize(n))
                .map_err(|e| anyhow!("normalising {}: {e}", f.display()))?;
            BertPreTokenizer
                .pre_tokenize(&mut pre)
                .map_err(|e| anyhow!("pre-tokenising {}: {e}", f.display()))?;
            for (w, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
                *counts.entry(w.to_string()).or_default() += 1;
            }
        }
    }
    if counts.is_empty() {
        bail!("no words in {:?}: nothing to train a vocabulary on", files);
    }
    let vocab = learn_wordpiece_vocab(counts, opts);
    // WordPiece reads a BERT vocab.txt (one token per line, id = line number).
    let vocab_txt = tempfile::NamedTempFile::new().context("creating a temporary vocab file")?;
    std::fs::write(vocab_txt.path(), vocab.join("\n") + "\n")
        .context("writing the temporary vocab file")?;
    let wp = WordPiece::from_file(&vocab_txt.path().to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    let mut tok = tokenizers::Tokenizer::new(wp);
    tok.with_normalizer(Some(normalizer)).map_err(|e| anyhow!("setting normaliser: {e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    tok.add_special_tokens(
        SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)).collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), 3), ("[CLS]".into(), 2))));
    tok.save(out, true).map_err(|e| anyhow!("saving tokenizer {}: {e}", out.display()))?;
    Tokenizer::from_file(out, 128)
}

/// The vocabulary in id order: special tokens, the alphabet (word-initial and `##` forms), then
/// merged pieces in the order they were learned.
fn learn_wordpiece_vocab(counts: HashMap<String, u64>, opts: &WordPieceOptions) -> Vec<String> {
    let mut words: Vec<(String, u64)> = counts.into_iter().collect();
    words.sort();
    // Alphabet: the most frequent characters (ties by character), capped.
    let mut chars: BTreeMap<char, u64> = BTreeMap::new();
    for (w, c) in &words {
        for ch in w.chars() {
            *chars.entry(ch).or_default() += c;
        }
    }
    let mut alpha: Vec<(char, u64)> = chars.into_iter().collect();
    alpha.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    alpha.truncate(opts.limit_alphabet);
    let alpha: BTreeSet<char> = alpha.into_iter().map(|(c, _)| c).collect();
    let mut vocab: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut known: HashSet<String> = vocab.iter().cloned().collect();
    let mut push = |t: String, vocab: &mut Vec<String>| {
        if known.insert(t.clone()) {
            vocab.push(t);
        }
    };
    // Words as symbol sequences (words with characters outside the alphabet become [UNK]).
    let mut seqs: Vec<(Vec<String>, u64)> = vec![];
    for (w, c) in &words {
        if !w.chars().all(|ch| alpha.contains(&ch)) {
            continue;
        }
        let syms: Vec<String> = w
            .chars()
            .enumerate()
            .map(|(i, ch)| if i == 0 { ch.to_string() } else { format!("##{ch}") })
            .collect();
        seqs.push((syms, *c));
    }
    let mut initial: BTreeSet<String> = BTreeSet::new();
    for (s, _) in &seqs {
        initial.extend(s.iter().cloned());
    }
    for t in initial {
        push(t, &mut vocab);
    }
    while vocab.len() < opts.vocab_size {
        let mut pairs: HashMap<(&str, &str), u64> = HashMap::new();
        for (s, c) in &seqs {
            for w in s.windows(2) {
                *pairs.entry((w[0].as_str(), w[1].as_str())).or_default() += c;
            }
        }
        // Highest count; ties by the pair's strings, so the choice never depends on hashing.
        let Some((&(a, b), &n)) =
            pairs.iter().max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0)))
        else {
            break;
        };
        if n < opts.min_frequency.max(1) {
            break;
        }
        let (a, b) = (a.to_string(), b.to_string());
        let merged = format!("{a}{}", b.strip_prefix("##").unwrap_or(&b));
        for (s, _) in seqs.iter_mut() {
            let mut i = 0;
            while i + 1 < s.len() {
                if s[i] == a && s[i + 1] == b {
                    s[i] = merged.clone();
                    s.remove(i + 1);
                }
                i += 1;
            }
        }
        push(merged, &mut vocab);
    }
    vocab
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("reports.txt");
        let lines = [
            "No acute cardiopulmonary abnormality.",
            "Small left pleural effusion with adjacent atelectasis.",
            "The heart is mildly enlarged. There is no pneumothorax.",
            "Moderate right pleural effusion. No focal consolidation.",
            "Pulmonary vascular congestion and mild interstitial edema.",
            "Endotracheal tube terminates 4 cm above the carina.",
            "Right PICC line tip in the distal SVC. Lungs are clear.",
            "Calcified granuloma in the left upper lobe. XXXX sternotomy wires.",
            "Comparison ___. Stable cardiomegaly. No pleural effusion.",
        ];
        let text: String = (0..30).flat_map(|_| lines.iter().map(|l| format!("{l}\n"))).collect();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn trains_wordpiece_and_encodes_with_offsets() {
        let dir = tempdir();
        let c = corpus(&dir);
        let out = dir.join("tokenizer.json");
        let tok = train_wordpiece(
            &[&c],
            &WordPieceOptions { vocab_size: 300, ..Default::default() },
            &out,
        )
        .unwrap();
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 50, "vocab {}", tok.vocab_size());
        assert_eq!(tok.pad_id, 0);
        assert_eq!(tok.token_to_id("[MASK]"), Some(4));
        let texts = ["Small left pleural effusion.", "No pneumothorax. Comparison ___ and XXXX."];
        let b = tok.encode_batch(&texts).unwrap();
        assert_eq!(b.batch, 2);
        // [CLS] first, [SEP] at the end of each row, padding after it with mask 0.
        for i in 0..2 {
            let ids = b.row(&b.input_ids, i);
            assert_eq!(ids[0], tok.cls_id.unwrap());
            let n = b.row(&b.attention_mask, i).iter().filter(|&&m| m == 1).count();
            assert_eq!(ids[n - 1], tok.sep_id.unwrap());
            assert!(ids[n..].iter().all(|&t| t == tok.pad_id));
        }
        // Offsets point back into the text: every word piece of "effusion" maps to that word.
        let offs = b.row(&b.offsets, 0);
        let words = b.row(&b.word_ids, 0);
        let text = texts[0];
        let eff: Vec<usize> = (0..b.len)
            .filter(|&t| offs[t].1 > offs[t].0 && &text[offs[t].0..offs[t].1] != ".")
            .filter(|&t| text[offs[t].0..offs[t].1].chars().all(|c| c.is_alphabetic()))
            .collect();
        let joined: String =
            eff.iter().map(|&t| &text[offs[t].0..offs[t].1]).collect::<Vec<_>>().join(" ");
        assert!(joined.contains("effusion") || joined.contains("eff"), "{joined}");
        assert_eq!(words[0], None);
        // Truncation overrides: max length 128 default; long text gets cut.
        let long = "effusion ".repeat(400);
        let b = tok.encode_batch(&[long.as_str()]).unwrap();
        assert_eq!(b.len, 128);
    }

    #[test]
    fn training_is_deterministic() {
        let dir = tempdir();
        let c = corpus(&dir);
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        for p in [&a, &b] {
            train_wordpiece(&[&c], &WordPieceOptions { vocab_size: 150, ..Default::default() }, p)
                .unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let tok = Tokenizer::from_file(&a, 64).unwrap();
        // Frequent words become single pieces.
        let b = tok.encode_batch(&["effusion"]).unwrap();
        assert_eq!(b.len, 3, "{:?}", b.input_ids);
    }

    #[test]
    fn loading_overrides_baked_in_padding() {
        let dir = tempdir();
        let c = corpus(&dir);
        let out = dir.join("tokenizer.json");
        let tok = train_wordpiece(
            &[&c],
            &WordPieceOptions { vocab_size: 200, ..Default::default() },
            &out,
        )
        .unwrap();
        // Bake fixed padding to 64 into a copy, as some hub tokenizers ship it.
        let mut inner = tok.inner().clone();
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(64),
            ..Default::default()
        }));
        let baked = dir.join("baked.json");
        inner.save(&baked, false).unwrap();
        let t2 = Tokenizer::from_file(&baked, 16).unwrap();
        let b = t2.encode_batch(&["no effusion"]).unwrap();
        assert!(b.len < 16, "padding to the longest, not the baked 64: {}", b.len);
    }

    #[test]
    fn bad_tokenizer_file_is_an_error_naming_it() {
        let dir = tempdir();
        let p = dir.join("broken.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = Tokenizer::from_file(&p, 32).err().unwrap().to_string();
        assert!(e.contains("broken.json"), "{e}");
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let e = train_wordpiece(&[&empty], &WordPieceOptions::default(), &dir.join("t.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }

    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "medvlp-tok-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
