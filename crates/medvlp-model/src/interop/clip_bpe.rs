//! CLIP's byte-level BPE tokenizer built from its merges file (`bpe_simple_vocab_16e6.txt.gz`, as
//! OpenAI's `clip` and open_clip ship it), as a `tokenizers` tokenizer: the same vocabulary order
//! as `SimpleTokenizer` (256 byte symbols, the same with `</w>`, one token per merge, then
//! `<|startoftext|>` and `<|endoftext|>`), lower-casing, whitespace folding and CLIP's word regex.
//! Written by hand because no crate reads this file; the JSON is the layout Hugging Face's
//! `CLIPTokenizerFast` saves. Differences: `SimpleTokenizer` first runs `ftfy.fix_text` and HTML
//! unescaping, which change mojibake,
//! HTML entities and curly quotes: the entities and quotes are replaced here too, mojibake is not.

use anyhow::{anyhow, Context, Result};
use std::io::Read;
use std::path::Path;

/// GPT-2's byte -> printable character table, in `bytes_to_unicode()`'s order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> =
        (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).expect("valid"))).collect()
}

/// The merges file's merge lines as `SimpleTokenizer` slices them (`lines[1:49152-256-2+1]`).
pub fn read_merges(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .with_context(|| format!("{}: not a gzip text file", path.display()))?;
    } else {
        text =
            String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))?;
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let end = lines.len().min(49152 - 256 - 2 + 1);
    if end <= 1 {
        anyhow::bail!("{}: no merges after the header line", path.display());
    }
    Ok(lines[1..end].iter().map(|s| s.to_string()).collect())
}

/// `basic_clean` of open_clip and `clip` as normalizer steps: `html.unescape` (applied twice) and
/// ftfy's quote uncurling, for the characters report text can carry.
fn cleaning_rules() -> Vec<serde_json::Value> {
    let rep = |from: &str, to: &str| serde_json::json!({"type": "Replace", "pattern": {"String": from}, "content": to});
    vec![
        rep("&amp;", "&"),
        rep("&amp;", "&"),
        rep("&lt;", "<"),
        rep("&gt;", ">"),
        rep("&quot;", "\""),
        rep("&#39;", "'"),
        rep("\u{2018}", "'"),
        rep("\u{2019}", "'"),
        rep("\u{201c}", "\""),
        rep("\u{201d}", "\""),
    ]
}

/// `tok` with open_clip's text cleaning before its own normalizer: open_clip's `HFTokenizer`
/// cleans text the same way before a Hugging Face tokenizer sees it.
pub fn with_open_clip_cleaning(tok: &tokenizers::Tokenizer) -> Result<tokenizers::Tokenizer> {
    let mut v: serde_json::Value = serde_json::from_str(
        &tok.to_string(false).map_err(|e| anyhow!("serialising the tokenizer: {e}"))?,
    )?;
    let mut steps = cleaning_rules();
    match v.get("normalizer").cloned() {
        Some(serde_json::Value::Null) | None => {}
        Some(n) => steps.push(n),
    }
    v["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": steps});
    serde_json::to_string(&v)?
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow!("adding open_clip's text cleaning: {e}"))
}

/// `tokenizer.json` text of CLIP's tokenizer for `merges`.
pub fn tokenizer_json(merges: &[String]) -> Result<String> {
    let byte_chars: Vec<String> =
        bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let mut vocab: Vec<String> = byte_chars.clone();
    vocab.extend(byte_chars.iter().map(|c| format!("{c}</w>")));
    let mut merge_pairs = vec![];
    for m in merges {
        let parts: Vec<&str> = m.split_whitespace().collect();
        vocab.push(parts.concat());
        if parts.len() == 2 {
            merge_pairs.push(format!("{} {}", parts[0], parts[1]));
        }
    }
    let sot = vocab.len();
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let eot = sot + 1;
    let mut map = serde_json::Map::new();
    for (i, t) in vocab.iter().enumerate() {
        // A later duplicate (an empty line in a short file) must not move an earlier id.
        map.entry(t.clone()).or_insert(serde_json::json!(i));
    }
    let special = |id: usize, s: &str| {
        serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true})
    };
    let cleaning = cleaning_rules();
    let pattern = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
    let v = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(sot, "<|startoftext|>"), special(eot, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            cleaning[0], cleaning[1], cleaning[2], cleaning[3], cleaning[4],
            cleaning[5], cleaning[6], cleaning[7], cleaning[8], cleaning[9],
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eot],
            "cls": ["<|startoftext|>", sot], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": map, "merges": merge_pairs}
    });
    Ok(serde_json::to_string(&v)?)
}

/// CLIP's tokenizer from a merges file.
pub fn load(path: &Path) -> Result<tokenizers::Tokenizer> {
    let json = tokenizer_json(&read_merges(path)?)?;
    json.parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow!("{}: building the CLIP tokenizer: {e}", path.display()))
}
