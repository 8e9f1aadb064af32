#!/usr/bin/env python3
"""Generate the foreign-checkpoint parity fixtures for medvlp's checkpoint importers.

What it makes (under --out, normally crates/medvlp-model/tests/data/interop):

  sentences.txt          100 radiology report sentences, one per line (written inline below).
  versions.json          package versions used + per-family facts a loader needs (all stored key names).
  (README.md next to them is hand-written and is not touched by this script.)
  clip_openai/           OpenAI `clip` package / CheXzero layout: model.pt = torch.save(state_dict) of an
                         OpenAI-layout CLIP (QuickGELU, heads = width // 64), + bpe_simple_vocab.txt.gz.
                         (CheXzero uses ViT-B/32 with exactly this key layout.)
  clip_hf/               transformers CLIPModel.save_pretrained dir + CLIP BPE tokenizer files.
  open_clip_timm_hf/     BiomedCLIP-style open_clip hub layout: timm ViT (`test_vit`) image tower +
                         HF BERT text tower; open_clip_config.json + open_clip_pytorch_model.bin, text/.
  open_clip_builtin/     open_clip built-in ViT + text transformer (nn.GELU); open_clip_config.json +
                         open_clip_model.safetensors + bpe_simple_vocab.txt.gz.
  resnet_bert_mgca/      MGCA-style PyTorch Lightning checkpoint last.ckpt (tiny torchvision-Bottleneck
                         ResNet + BLIP/MGCA `med.py` BERT + GlobalEmbedding/LocalEmbedding heads).
  hf_dual_encoder/       transformers VisionTextDualEncoderModel (ViT + BERT) save_pretrained dir.
  bad/                   malformed files for loader error tests (never loaded by this script).

Every family folder has reference.safetensors (pixel_values, image_embeds, input_ids, attention_mask,
text_embeds, logit_scale where the family has one; embeddings are the projected features BEFORE L2
normalisation) and token_ids.json (ids of all 100 sentences with special tokens, truncated to the
family's context length, not padded).

All models are tiny and random-initialised; every parameter and BatchNorm running statistic is
re-drawn from a seeded generator so that biases, norm weights and BN stats are non-trivial.

Rerun (deterministic: every file is byte-identical on rerun except bad/torchscript.pt, whose TorchScript
archive holds a random serialization_id; needs torch, torchvision, transformers, tokenizers, open_clip_torch, timm,
safetensors, ftfy, regex -- the venv at /root/venvs/interop has them):

    /root/venvs/interop/bin/python scripts/gen_interop_fixtures.py \
        --out crates/medvlp-model/tests/data/interop
"""

import argparse
import collections
import gzip
import io
import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)  # bit-stable reruns

# open_clip's bundled BPE ranks; we keep the header line + the first N_MERGES merges.
N_MERGES_DEFAULT = 2000
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
BIOMEDBERT_HUB_NAME = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"

# ----------------------------------------------------------------------------------------------
# 100 radiology report sentences. The first 8 feed the reference tensors; #5 is > 80 words so that
# every family truncates it. IU/OpenI de-identification is XXXX, MIMIC-CXR is ___.
# ----------------------------------------------------------------------------------------------
SENTENCES = [
    "The heart is normal in size. The mediastinum is unremarkable.",
    "XXXX XXXX are intact. No focal airspace consolidation, pleural effusion, or pneumothorax.",
    "Compared to the prior study from ___, there is a new 3.5 cm right upper lobe (RUL) mass.",
    "Mild degenerative changes of the thoracic spine, most pronounced at T10-T11.",
    "PA and lateral views of the chest dated 03/14/2019 show a left-sided PICC line terminating in the distal SVC.",
    "FINDINGS: Compared with the radiograph obtained on ___ at 08:15, the endotracheal tube now terminates "
    "approximately 4.2 cm above the carina, the right internal jugular central venous catheter tip projects over "
    "the cavoatrial junction, and the nasogastric tube courses below the diaphragm with its side port in the "
    "stomach; there is persistent moderate cardiomegaly with pulmonary vascular congestion, bibasilar atelectasis "
    "(left greater than right), and small bilateral pleural effusions which have slightly decreased in size, while "
    "no pneumothorax is identified and the visualized osseous structures demonstrate multilevel degenerative "
    "changes without acute fracture, although evaluation of the right posterior ribs is limited by overlying "
    "monitoring leads and a portable AP technique with suboptimal inspiration (approximately 8 posterior ribs "
    "visible).",
    "Interval increase in left pleural effusion, now moderate (estimated 25-30% of the hemithorax).",
    "IMPRESSION: No acute cardiopulmonary process. ≥ 2 calcified granulomas in the right lung base.",
    "Lungs are clear bilaterally.",
    "There is no pneumothorax.",
    "No pleural effusion is seen.",
    "Cardiomediastinal silhouette is within normal limits.",
    "Stable appearance of the chest compared to XXXX.",
    "Heart size is upper limits of normal.",
    "Median sternotomy wires and mediastinal clips are noted, s/p CABG.",
    "Right IJ catheter tip terminates in the mid SVC.",
    "ET tube is 5 cm above the carina.",
    "Enteric tube extends below the diaphragm, tip not visualized.",
    "Left lower lobe opacity may represent atelectasis or pneumonia.",
    "Recommend follow-up CT in 3-6 months to assess the 8 mm nodule.",
    "Findings were discussed with Dr. ___ at 3:45 p.m. on ___ by telephone.",
    "Small left apical pneumothorax measuring 1.2 cm, decreased from 2.4 cm.",
    "Moderate pulmonary edema, slightly improved since 11/02/2021.",
    "No radiographic evidence of tuberculosis.",
    "Hyperexpanded lungs with flattened hemidiaphragms, consistent with COPD.",
    "Calcified granuloma in the right mid lung zone.",
    "Bibasilar opacities likely reflect atelectasis; infection not excluded.",
    "AP portable upright view of the chest.",
    "The osseous structures are grossly intact.",
    "Old healed fracture of the left 5th and 6th ribs.",
    "There is elevation of the right hemidiaphragm.",
    "Mild to moderate cardiomegaly is unchanged.",
    "Tortuous and calcified thoracic aorta.",
    "Compression deformity of the T12 vertebral body, age indeterminate.",
    "Dual-lead pacemaker with leads in the right atrium and right ventricle.",
    "Post-operative changes of left upper lobectomy.",
    "Large right pleural effusion with compressive atelectasis (approx. 50% of the right hemithorax).",
    "No free air under the diaphragm.",
    "Patchy consolidation in the lingula, concerning for pneumonia.",
    "Bilateral hilar lymphadenopathy, suggestive of sarcoidosis.",
    "Vascular congestion without frank edema.",
    "Interval removal of the left chest tube; no residual pneumothorax.",
    "Subcutaneous emphysema along the right lateral chest wall.",
    "Nodular opacity measuring 2.1 x 1.8 cm in the left upper lobe.",
    "Small hiatal hernia.",
    "Degenerative changes at the glenohumeral joints bilaterally.",
    "Low lung volumes accentuate the bronchovascular markings.",
    "No acute osseous abnormality is identified in the C-spine or T-spine.",
    "Cardiac silhouette is enlarged, cardiothoracic ratio approximately 0.6.",
    "Mediastinal widening (8.5 cm at the level of the aortic knob) raises concern for aortic injury.",
    "COMPARISON: Chest radiographs from ___ and ___, as well as CT chest dated ___, are available for "
    "review, and the current study demonstrates a stable 1.1 cm spiculated nodule in the right upper lobe, "
    "unchanged small left pleural effusion, mild interstitial prominence at the lung bases that could reflect "
    "chronic fibrosis or superimposed mild edema, stable postsurgical changes from a prior left mastectomy with "
    "axillary clips, a right-sided Port-A-Cath whose tip terminates at the cavoatrial junction, and no new focal "
    "consolidation, although subtle infection in the lower lobes cannot be entirely excluded on this single "
    "frontal view.",
    "The lungs are hyperinflated but clear.",
    "Streaky left basilar opacity, likely atelectasis.",
    "No evidence of pneumoperitoneum.",
    "Biapical pleural thickening, likely chronic.",
    "There is a 4 mm nodule in the right lower lobe (series 3, image 45).",
    "Left ventricular configuration of the heart.",
    "Kerley B lines are present at the lung bases.",
    "The patient\u2019s right arm overlies the lateral view.",
    "Osteopenia; multilevel thoracic spondylosis.",
    "No significant interval change since the examination of 7/5/2018.",
    "Pulmonary arteries are enlarged, suggestive of pulmonary hypertension.",
    "Swan-Ganz catheter tip in the right descending pulmonary artery.",
    "Left-sided AICD with lead tip in the RV apex.",
    "Minimal blunting of the right costophrenic angle.",
    "Air-fluid level in the left lower hemithorax, consistent with hydropneumothorax.",
    "Scoliosis of the thoracolumbar spine, convex to the right.",
    "Granulomatous calcifications in the hila &amp; mediastinum.",
    "Café-au-lait lesions are not assessed radiographically.",
    "The tracheostomy tube is midline.",
    "Diffuse reticular opacities, increased from ___.",
    "Patient's position is rotated, limiting evaluation of the mediastinum.",
    "Lordotic positioning; the apices are partially obscured.",
    "Azygos fissure, a normal variant.",
    "Surgical clips in the right upper quadrant from prior cholecystectomy.",
    "A 10% right apical pneumothorax is unchanged.",
    "Retrocardiac opacity obscures the left hemidiaphragm.",
    "Pectus excavatum deformity.",
    "No displaced rib fractures are identified; dedicated rib views (if clinically indicated) may be obtained.",
    "Irregular opacity at L1 is likely related to overlying EKG leads.",
    "O2 saturation 88% on room air; please correlate clinically.",
    "XXXX opacity in the right middle lobe.",
    "Heart size normal. Lungs clear. XXXX normal.",
    "Bilateral breast implants limit evaluation of the lung bases.",
    "Findings consistent with CHF/volume overload.",
    "Lucency along the left heart border may reflect pneumomediastinum.",
    "Right PICC with tip at the cavo-atrial junction.",
    "Prominent epicardial fat pad at the right cardiophrenic angle.",
    "Stable 6-mm calcified nodule (benign).",
    "Findings communicated to the ICU team at 14:30 on ___.",
    "The endotracheal tube has been withdrawn by 2 cm and now lies 3 cm above the carina.",
    "Coarse interstitial markings, compatible with known IPF.",
    "No mediastinal or hilar masses; no cavitary lesions.",
    "Widened superior mediastinum is unchanged in 2020 and 2022.",
    "Mild bronchiectasis in the lower lobes, L > R.",
    "Impression: 1) Pneumonia. 2) Small effusions.",
    "Chest: Normal.",
    "NG tube coiled in the esophagus; recommend repositioning.",
    "Possible early RLL infiltrate versus atelectasis.",
    "Aortic valve replacement and mitral annuloplasty ring are present.",
]
assert len(SENTENCES) == 100, len(SENTENCES)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class Rng:
    """Seeded torch generator; all random draws go through it."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.g, dtype=torch.float32)

    def rand(self, *shape):
        return torch.rand(*shape, generator=self.g, dtype=torch.float32)


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
EMBED_PARAM_NAMES = {
    "class_embedding", "positional_embedding", "cls_token", "pos_embed", "position_embeddings", "reg_token",
}
# OpenAI-layout projections are used as `x @ proj` ([in, out]); everything else 2-D is [out, in].
IN_OUT_PARAM_NAMES = {"proj", "text_projection"}


@torch.no_grad()
def reinit_(model: nn.Module, rng: Rng, logit_scale=None):
    """Re-draw every parameter and BN running statistic with small non-trivial random values."""
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if pname in ("logit_scale",):
                p.copy_(torch.full_like(p, logit_scale))
            elif isinstance(m, NORM_TYPES) and pname == "weight":
                p.copy_(1.0 + 0.1 * rng.randn(*p.shape))
            elif isinstance(m, NORM_TYPES) and pname == "bias":
                p.copy_(0.1 * rng.randn(*p.shape))
            elif isinstance(m, nn.Embedding) or pname in EMBED_PARAM_NAMES:
                p.copy_(0.5 * rng.randn(*p.shape))
            elif p.ndim == 1:
                p.copy_(0.05 * rng.randn(*p.shape))
            else:
                fan_in = p.shape[0] if pname in IN_OUT_PARAM_NAMES else p[0].numel()
                p.copy_(rng.randn(*p.shape) / math.sqrt(fan_in))
        for bname, b in m.named_buffers(recurse=False):
            if bname == "running_mean":
                b.copy_(0.1 * rng.randn(*b.shape))
            elif bname == "running_var":
                b.copy_(0.5 + rng.rand(*b.shape))
            elif bname == "num_batches_tracked":
                b.fill_(120)


def save_reference(path: Path, tensors: dict):
    from safetensors.torch import save_file

    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        out[k] = v
    save_file(out, str(path))


def write_json(path: Path, obj, indent=2):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_token_ids(path: Path, ids):
    # one sentence per line keeps diffs readable
    lines = ",\n".join("  " + json.dumps([int(t) for t in row]) for row in ids)
    path.write_text('{"ids": [\n' + lines + "\n]}\n", encoding="utf-8")


def assert_close(a, b, name, atol=1e-5, rtol=1e-5):
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{name}: max abs diff {(a - b).abs().max().item()}")


def file_keys(path: Path):
    """Tensor names as stored on disk (transformers 5 may rename modules in memory, see hf_dual_encoder)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


# ----------------------------------------------------------------------------------------------
# CLIP BPE (truncated)
# ----------------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_truncated_bpe(n_merges):
    """Returns (gz_bytes, header, merges[list of (a, b)]).

    The file is header + n_merges lines joined by '\\n' with NO trailing newline: open_clip's
    SimpleTokenizer does `split('\\n')[1:48895]`, so a trailing newline on a short file would add an
    empty "merge" (vocab entry '') and shift the special-token ids by one.
    """
    import open_clip.tokenizer as oct

    raw = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")
    header, merges = raw[0], raw[1:1 + n_merges]
    assert all(len(m.split()) == 2 for m in merges)
    text = "\n".join([header] + merges)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    return buf.getvalue(), header, [tuple(m.split()) for m in merges]


def clip_vocab_list(merges, sot="<|startoftext|>", eot="<|endoftext|>"):
    v = list(bytes_to_unicode().values())
    v = v + [x + "</w>" for x in v]
    v += ["".join(m) for m in merges]
    v += [sot, eot]
    return v


def openai_token_ids(tok, texts, context_length):
    """clip/open_clip tokenize, without padding: [sot] + bpe + [eot], truncated with eot forced last."""
    rows = []
    for t in texts:
        ids = [tok.sot_token_id] + tok.encode(t) + [tok.eot_token_id]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = tok.eot_token_id
        rows.append(ids)
    return rows


def openai_pad(rows, context_length):
    ids = torch.zeros(len(rows), context_length, dtype=torch.int64)
    mask = torch.zeros(len(rows), context_length, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1  # up to and including the end-of-text token
    return ids, mask


# ----------------------------------------------------------------------------------------------
# WordPiece vocab (built deterministically from the sentences)
# ----------------------------------------------------------------------------------------------
WP_SUFFIXES = ["##s", "##es", "##ed", "##ing", "##al", "##ly", "##ion", "##tion", "##ic", "##ar", "##ary",
               "##ity", "##ment", "##ous", "##ate", "##ated", "##ial", "##ure", "##er", "##is", "##ia", "##y"]
WP_EXCLUDED_CHARS = {"≥", "°", "\u2019"}  # stay [UNK] on purpose


def build_wordpiece_vocab(layout, max_words=260):
    """layout 'biomedbert': [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (like BiomedBERT/PubMedBERT).
    layout 'bert_base': [PAD]=0, [unused0..98]=1..99, [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103
    (like bert-base / Bio_ClinicalBERT, used by MGCA)."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = collections.Counter()
    chars = set()
    for s in SENTENCES:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(s)):
            counts[w] += 1
            chars.update(w)
    chars -= WP_EXCLUDED_CHARS
    chars = sorted(chars)
    words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 2 and len(w) > 1]
    words = words[:max_words]
    if layout == "biomedbert":
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    elif layout == "bert_base":
        vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        raise ValueError(layout)
    vocab += chars
    vocab += ["##" + c for c in chars if c.isalnum()]
    seen = set(vocab)
    for w in WP_SUFFIXES + words:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    assert len(vocab) == len(set(vocab))
    return vocab


def make_bert_tokenizer(vocab, model_max_length):
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                        model_max_length=model_max_length)
    return tok


def save_bert_tokenizer(tok, vocab, d: Path):
    tok.save_pretrained(str(d))
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


def hf_token_ids(tok, texts, max_length):
    return [tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


# ----------------------------------------------------------------------------------------------
# a. clip_openai
# ----------------------------------------------------------------------------------------------
def fam_clip_openai(out: Path, bpe_gz: bytes, n_merges: int, facts: dict):
    import open_clip.model as ocm
    from open_clip.tokenizer import SimpleTokenizer

    d = out / "clip_openai"
    d.mkdir(parents=True)
    (d / "bpe_simple_vocab.txt.gz").write_bytes(bpe_gz)
    tok = SimpleTokenizer(bpe_path=str(d / "bpe_simple_vocab.txt.gz"), context_length=77)
    vocab_size = 256 * 2 + n_merges + 2
    assert tok.vocab_size == vocab_size, (tok.vocab_size, vocab_size)
    assert (tok.sot_token_id, tok.eot_token_id) == (vocab_size - 2, vocab_size - 1)

    rng = Rng(1001)
    model = ocm.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=64),
        text_cfg=dict(context_length=77, vocab_size=vocab_size, width=64, heads=1, layers=2),
        quick_gelu=True,
    ).eval()
    reinit_(model, rng, logit_scale=math.log(1 / 0.07) + 0.1)
    sd = model.state_dict()
    torch.save(sd, str(d / "model.pt"))

    rows = openai_token_ids(tok, SENTENCES, 77)
    write_token_ids(d / "token_ids.json", rows)
    ids, mask = openai_pad(rows[:8], 77)
    assert torch.equal(ids, tok(SENTENCES[:8], context_length=77))
    pv = rng.randn(2, 3, 32, 32)
    with torch.no_grad():
        img = model.encode_image(pv, normalize=False)
        txt = model.encode_text(ids, normalize=False)

    # layout check: rebuild the way OpenAI's clip.build_model / open_clip's openai loader infers it
    # (heads = width // 64, sizes from shapes); fp16 conversion disabled so the check is exact.
    orig = ocm.convert_weights_to_fp16
    ocm.convert_weights_to_fp16 = lambda m: None
    try:
        m2 = ocm.build_model_from_openai_state_dict(torch.load(str(d / "model.pt"), weights_only=True),
                                                    quick_gelu=True, cast_dtype=None)
    finally:
        ocm.convert_weights_to_fp16 = orig
    with torch.no_grad():
        assert_close(m2.encode_image(pv), img, "clip_openai image (rebuilt)")
        assert_close(m2.encode_text(ids), txt, "clip_openai text (rebuilt)")

    save_reference(d / "reference.safetensors", dict(
        pixel_values=pv, image_embeds=img, input_ids=ids, attention_mask=mask, text_embeds=txt,
        logit_scale=model.logit_scale.detach().reshape(()).clone()))
    facts["clip_openai"] = dict(
        files=["model.pt", "bpe_simple_vocab.txt.gz"],
        format="torch.save(model.state_dict()) zip archive, plain float32 tensors",
        keys=list(sd.keys()),
        image=dict(image_size=32, patch_size=8, width=64, layers=2, heads=1, grid=4, tokens=17),
        text=dict(context_length=77, vocab_size=vocab_size, width=64, layers=2, heads=1, causal_mask=True),
        embed_dim=32,
        activation="QuickGELU x*sigmoid(1.702x)",
        layer_norm_eps=1e-5,
        heads_rule="heads = width // 64 (OpenAI clip.build_model; not stored anywhere)",
        image_pooling="ln_post(x[:, 0]) @ visual.proj  (class token; visual.proj is [width, embed_dim])",
        text_pooling="ln_final(x)[arange, input_ids.argmax(-1)] @ text_projection  (eot = highest id; "
                     "text_projection is [width, embed_dim])",
        padding="pad id 0 (which is also the id of '!'); attention_mask marks sot..eot inclusive "
                "(the model itself uses only the causal mask)",
        truncation="tokens[:77] then tokens[76] = eot",
        sot_id=vocab_size - 2, eot_id=vocab_size - 1,
        normalisation=dict(mean=OPENAI_MEAN, std=OPENAI_STD),
        tokenizer_clean="ftfy.fix_text, html.unescape twice, whitespace collapse, lower-case",
        chexzero_note="CheXzero checkpoints are OpenAI ViT-B/32 (width 768, 12 layers, 12 heads, patch 32, "
                      "image 224, embed 512, context 77, vocab 49408) in exactly this key layout.",
    )
    return tok


# ----------------------------------------------------------------------------------------------
# b. clip_hf
# ----------------------------------------------------------------------------------------------
def fam_clip_hf(out: Path, merges, n_merges: int, facts: dict, openai_rows):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    import transformers

    d = out / "clip_hf"
    d.mkdir(parents=True)
    vocab = clip_vocab_list(merges)
    vocab_size = len(vocab)
    assert vocab_size == 256 * 2 + n_merges + 2
    write_json(d / "vocab.json", {t: i for i, t in enumerate(vocab)}, indent=None)
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                  encoding="utf-8")
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m) for m in merges],
                        model_max_length=77)
    tok.save_pretrained(str(d))
    tok = CLIPTokenizer.from_pretrained(str(d))  # what a user gets back from the saved files

    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1,
                         projection_dim=32),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu", projection_dim=32),
        projection_dim=32,
    )
    rng = Rng(1002)
    model = CLIPModel(config).eval()
    reinit_(model, rng, logit_scale=math.log(1 / 0.07) - 0.2)
    model.save_pretrained(str(d), safe_serialization=True)

    rows = hf_token_ids(tok, SENTENCES, 77)
    write_token_ids(d / "token_ids.json", rows)
    enc = tok(SENTENCES[:8], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    pv = rng.randn(2, 3, 32, 32)
    with torch.no_grad():
        io_ = model.get_image_features(pixel_values=pv)
        to_ = model.get_text_features(input_ids=ids, attention_mask=mask)
        img_ret_type, txt_ret_type = type(io_).__name__, type(to_).__name__
        img = io_.pooler_output if not torch.is_tensor(io_) else io_
        txt = to_.pooler_output if not torch.is_tensor(to_) else to_
        full = model(input_ids=ids, attention_mask=mask, pixel_values=pv)
        assert_close(F.normalize(img, dim=-1), full.image_embeds, "clip_hf image vs forward")
        assert_close(F.normalize(txt, dim=-1), full.text_embeds, "clip_hf text vs forward")
        m2 = CLIPModel.from_pretrained(str(d)).eval()
        assert_close(m2.get_image_features(pixel_values=pv).pooler_output, img, "clip_hf reload image")
        assert_close(m2.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, txt,
                     "clip_hf reload text")
    assert img.shape == (2, 32) and txt.shape == (8, 32)

    diffs = [i for i, (a, b) in enumerate(zip(rows, openai_rows)) if a != b]
    save_reference(d / "reference.safetensors", dict(
        pixel_values=pv, image_embeds=img, input_ids=ids, attention_mask=mask, text_embeds=txt,
        logit_scale=model.logit_scale.detach().reshape(()).clone()))
    disk_keys = file_keys(d / "model.safetensors")
    facts["clip_hf"] = dict(
        files=sorted(p.name for p in d.iterdir()),
        keys=disk_keys,
        in_memory_names_equal_file_names=set(disk_keys) == set(model.state_dict().keys()),
        projection_keys=["visual_projection.weight [32, 64] (nn.Linear, no bias)",
                         "text_projection.weight [32, 64] (nn.Linear, no bias)", "logit_scale []"],
        get_features_return_type=dict(image=img_ret_type, text=txt_ret_type,
                                      note=f"transformers {transformers.__version__}: get_image_features / "
                                           "get_text_features return BaseModelOutputWithPooling whose "
                                           "pooler_output is the PROJECTED feature; reference uses .pooler_output"),
        eos_token_id=config.text_config.eos_token_id,
        text_pooling="eos_token_id != 2, so pooled = last_hidden(final_layer_norm) at the FIRST position where "
                     "input_ids == eos_token_id (new-style); with eos_token_id == 2 transformers uses argmax(ids)",
        image_pooling="post_layernorm(last_hidden[:, 0]) then visual_projection",
        activation="quick_gelu", layer_norm_eps=config.text_config.layer_norm_eps,
        heads=dict(text=2, vision=2), intermediate_size=128,
        padding=f"pad token is <|endoftext|> (id {vocab_size - 1}), NOT 0; attention_mask 1 on sot..eot",
        pad_token_id_in_config=config.text_config.pad_token_id,
        normalisation=dict(mean=OPENAI_MEAN, std=OPENAI_STD),
        token_ids_differ_from_clip_openai_at_sentences=diffs,
        tokenizer_note="HF CLIPTokenizer normalizer is NFC + whitespace collapse + lowercase only (no ftfy, no "
                       "html.unescape), so sentences with '&amp;' or curly quotes tokenize differently from "
                       "open_clip's SimpleTokenizer",
    )


# ----------------------------------------------------------------------------------------------
# c. open_clip_timm_hf (BiomedCLIP style)
# ----------------------------------------------------------------------------------------------
def fam_open_clip_timm_hf(out: Path, facts: dict, tmp: Path):
    import open_clip.model as ocm
    from open_clip.tokenizer import HFTokenizer
    from transformers import BertConfig

    d = out / "open_clip_timm_hf"
    (d / "text").mkdir(parents=True)
    ctx = 64
    vocab = build_wordpiece_vocab("biomedbert")
    tok = make_bert_tokenizer(vocab, ctx)
    bert_cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=ctx, pad_token_id=0)
    # a real local dir for open_clip's HFTextEncoder (AutoConfig.from_pretrained(path))
    text_src = tmp / "biomedbert_tiny"
    text_src.mkdir()
    bert_cfg.save_pretrained(str(text_src))
    save_bert_tokenizer(tok, vocab, text_src)
    # fixture copies: text/ (BERT config + tokenizer) and the tokenizer at top level too, which is where
    # open_clip.get_tokenizer('local-dir:...') looks for it.
    for name in sorted(os.listdir(text_src)):
        shutil.copy(text_src / name, d / "text" / name)
        if name != "config.json":
            shutil.copy(text_src / name, d / name)

    image_size = 160  # test_vit's native size (pretrained_cfg input_size 160, fixed_input_size)
    build_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": str(text_src), "hf_tokenizer_name": str(text_src),
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": ctx, "hf_model_pretrained": False},
    }
    rng = Rng(1003)
    model = ocm.CustomTextCLIP(**build_cfg).eval()
    reinit_(model, rng, logit_scale=math.log(1 / 0.07) + 0.3)
    sd = model.state_dict()
    # BiomedCLIP's released .bin predates transformers 4.31 and carries this persistent buffer
    # (open_clip.factory.load_checkpoint deletes it); keep it so loaders learn to skip int64 buffers.
    pos_ids_key = "text.transformer.embeddings.position_ids"
    assert pos_ids_key not in sd
    sd_saved = collections.OrderedDict(sd)
    sd_saved[pos_ids_key] = torch.arange(ctx, dtype=torch.int64).unsqueeze(0)
    torch.save(sd_saved, str(d / "open_clip_pytorch_model.bin"))

    saved_cfg = json.loads(json.dumps(build_cfg))
    saved_cfg["text_cfg"]["hf_model_name"] = BIOMEDBERT_HUB_NAME
    saved_cfg["text_cfg"]["hf_tokenizer_name"] = BIOMEDBERT_HUB_NAME
    del saved_cfg["text_cfg"]["hf_model_pretrained"]
    write_json(d / "open_clip_config.json",
               {"model_cfg": saved_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}})

    hft = HFTokenizer(str(text_src), context_length=ctx)
    cleaned = [hft.clean_fn(s) for s in SENTENCES]
    rows = hf_token_ids(hft.tokenizer, cleaned, ctx)
    write_token_ids(d / "token_ids.json", rows)
    ids = hft(SENTENCES[:8]).long()
    mask = (ids != bert_cfg.pad_token_id).long()
    pv = rng.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        img = model.encode_image(pv, normalize=False)
        txt = model.encode_text(ids, normalize=False)
        # reload the saved files the way open_clip.load_checkpoint would
        cfg2 = json.loads((d / "open_clip_config.json").read_text())["model_cfg"]
        cfg2["text_cfg"].update(hf_model_name=str(text_src), hf_tokenizer_name=str(text_src),
                                hf_model_pretrained=False)
        m2 = ocm.CustomTextCLIP(**cfg2).eval()
        sd2 = torch.load(str(d / "open_clip_pytorch_model.bin"), weights_only=True)
        del sd2[pos_ids_key]
        m2.load_state_dict(sd2, strict=True)
        assert_close(m2.encode_image(pv), img, "timm_hf reload image")
        assert_close(m2.encode_text(ids), txt, "timm_hf reload text")
        # manual recomputation of the pooling path
        trunk = model.visual.trunk
        feats = trunk.forward_features(pv)  # includes final norm
        man_img = feats[:, 0] @ model.visual.head.proj.weight.T
        assert_close(man_img, img, "timm_hf manual image")
        hs = model.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        p0, p2 = model.text.proj[0].weight, model.text.proj[2].weight
        man_txt = F.gelu(hs @ p0.T) @ p2.T
        assert_close(man_txt, txt, "timm_hf manual text")

    save_reference(d / "reference.safetensors", dict(
        pixel_values=pv, image_embeds=img, input_ids=ids, attention_mask=mask, text_embeds=txt,
        logit_scale=model.logit_scale.detach().reshape(()).clone()))

    blk = trunk.blocks[0]
    facts["open_clip_timm_hf"] = dict(
        files=sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()),
        keys=list(sd_saved.keys()),
        timm_model=dict(
            name="test_vit", num_heads=blk.attn.num_heads, depth=len(trunk.blocks), embed_dim=trunk.embed_dim,
            patch_size=list(trunk.patch_embed.patch_size), img_size=list(trunk.patch_embed.img_size),
            mlp_hidden=blk.mlp.fc1.out_features, mlp_ratio=blk.mlp.fc1.out_features / trunk.embed_dim,
            qkv_bias=blk.attn.qkv.bias is not None, global_pool=trunk.global_pool,
            class_token=trunk.cls_token is not None, num_prefix_tokens=trunk.num_prefix_tokens,
            no_embed_class=trunk.no_embed_class, pos_embed_shape=list(trunk.pos_embed.shape),
            norm_eps=trunk.norm.eps, block_norm_eps=blk.norm1.eps, has_fc_norm=not isinstance(trunk.fc_norm, nn.Identity),
            fc_norm=type(trunk.fc_norm).__name__, norm_pre=type(trunk.norm_pre).__name__,
            dynamic_img_size=trunk.dynamic_img_size, layer_scale=type(blk.ls1).__name__,
            act="GELU (exact erf)", trunk_head=type(trunk.head).__name__,
        ),
        vision_head_keys=[k for k in sd.keys() if k.startswith("visual.head.")],
        vision_trunk_tail_keys=[k for k in sd.keys() if k.startswith("visual.trunk.norm.")],
        text_proj_keys=[k for k in sd.keys() if k.startswith("text.proj.")],
        image_pooling="timm forward_features (patch_embed -> cat cls -> +pos_embed -> blocks -> norm), "
                      "take token 0 (global_pool 'token'; timm_pool '' keeps the model default), "
                      "then visual.head.proj (Linear 64->32, no bias); open_clip does NOT pass image_size to "
                      "timm, the trunk is built at test_vit's native 160x160",
        text_pooling="HF BertModel (no pooler) last_hidden_state[:, 0] -> text.proj.0 (Linear 64->48, no bias) "
                     "-> GELU (exact) -> text.proj.2 (Linear 48->32, no bias); attention mask = ids != pad(0)",
        bert=dict(hidden=64, layers=2, heads=2, intermediate=128, max_position_embeddings=ctx,
                  layer_norm_eps=bert_cfg.layer_norm_eps, act="gelu (exact)", vocab_size=len(vocab),
                  special_ids=dict(pad=0, unk=1, cls=2, sep=3, mask=4), token_type_embeddings="present, "
                  "type 0 used"),
        context_length=ctx, padding="[PAD]=0 to max_length 64, truncation keeps [SEP] last",
        tokenizer_clean="open_clip HFTokenizer clean='whitespace': ftfy.fix_text + html.unescape x2 + "
                        "whitespace collapse (no lower-casing there; the BERT normalizer lower-cases)",
        extra_key_to_ignore=pos_ids_key + " (int64 [1, 64])",
        normalisation=dict(mean=OPENAI_MEAN, std=OPENAI_STD),
        hub_names_rewritten_to=BIOMEDBERT_HUB_NAME,
        biomedclip_real=dict(timm_model_name="vit_base_patch16_224", embed_dim=512, image_size=224,
                             context_length=256, heads=12, depth=12, width=768, norm_eps=1e-6),
    )


# ----------------------------------------------------------------------------------------------
# d. open_clip_builtin
# ----------------------------------------------------------------------------------------------
def fam_open_clip_builtin(out: Path, bpe_gz: bytes, n_merges: int, facts: dict, openai_tok):
    import open_clip
    import open_clip.model as ocm
    from safetensors.torch import save_file

    d = out / "open_clip_builtin"
    d.mkdir(parents=True)
    (d / "bpe_simple_vocab.txt.gz").write_bytes(bpe_gz)
    vocab_size = 256 * 2 + n_merges + 2
    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": vocab_size, "width": 64, "heads": 2, "layers": 2},
    }
    rng = Rng(1004)
    model = ocm.CLIP(**model_cfg).eval()
    reinit_(model, rng, logit_scale=math.log(1 / 0.07) - 0.4)
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "open_clip_model.safetensors"))
    write_json(d / "open_clip_config.json",
               {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}})

    from open_clip.tokenizer import SimpleTokenizer
    tok = SimpleTokenizer(bpe_path=str(d / "bpe_simple_vocab.txt.gz"), context_length=77)
    rows = openai_token_ids(tok, SENTENCES, 77)
    write_token_ids(d / "token_ids.json", rows)
    ids, mask = openai_pad(rows[:8], 77)
    pv = rng.randn(2, 3, 32, 32)
    with torch.no_grad():
        img = model.encode_image(pv, normalize=False)
        txt = model.encode_text(ids, normalize=False)
        m2 = open_clip.create_model("local-dir:" + str(d)).eval()  # loads config + safetensors
        assert_close(m2.encode_image(pv), img, "builtin reload image")
        assert_close(m2.encode_text(ids), txt, "builtin reload text")
        assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, nn.GELU)
    save_reference(d / "reference.safetensors", dict(
        pixel_values=pv, image_embeds=img, input_ids=ids, attention_mask=mask, text_embeds=txt,
        logit_scale=model.logit_scale.detach().reshape(()).clone()))
    facts["open_clip_builtin"] = dict(
        files=sorted(p.name for p in d.iterdir()),
        keys=list(sd.keys()),
        projection_keys=["visual.proj [64, 32] (x @ proj)", "text_projection [64, 32] (x @ proj)", "logit_scale []"],
        activation="nn.GELU (exact erf), quick_gelu false", layer_norm_eps=1e-5,
        heads=dict(vision="width // head_width = 64 // 32 = 2", text=2), mlp_ratio=4.0,
        image_pooling="pool_type 'tok': ln_post on all tokens, take token 0, @ visual.proj",
        text_pooling="pool_type 'argmax': ln_final, take position of argmax(input_ids) (eot), @ text_projection",
        token_ids_same_as_clip_openai=rows == openai_token_ids(openai_tok, SENTENCES, 77),
        tokenizer_note="open_clip would use its default 49408-token SimpleTokenizer for a config without "
                       "hf_tokenizer_name; the bundled bpe_simple_vocab.txt.gz (2000 merges) is the tokenizer "
                       "these ids were made with",
        normalisation=dict(mean=OPENAI_MEAN, std=OPENAI_STD),
    )


# ----------------------------------------------------------------------------------------------
# e. resnet_bert_mgca
# ----------------------------------------------------------------------------------------------
class TinyResNet(nn.Module):
    """torchvision ResNet topology with torchvision Bottleneck blocks, widths /16, one block per stage."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(Bottleneck, 4, 1)
        self.layer2 = self._make_layer(Bottleneck, 8, 1, stride=2)
        self.layer3 = self._make_layer(Bottleneck, 16, 1, stride=2)
        self.layer4 = self._make_layer(Bottleneck, 32, 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()  # MGCA: model.fc = Identity()

    def _make_layer(self, block, planes, blocks, stride=1):  # == torchvision ResNet._make_layer
        from torchvision.models.resnet import conv1x1

        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)


class GlobalEmbedding(nn.Module):  # MGCA backbones/encoder.py
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                  nn.Linear(hidden_dim, output_dim), nn.BatchNorm1d(output_dim, affine=False))

    def forward(self, x):
        return self.head(x)


class LocalEmbedding(nn.Module):  # MGCA backbones/encoder.py
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.head = nn.Sequential(nn.Conv1d(input_dim, hidden_dim, 1, 1, 0), nn.BatchNorm1d(hidden_dim),
                                  nn.ReLU(inplace=True), nn.Conv1d(hidden_dim, output_dim, 1, 1, 0),
                                  nn.BatchNorm1d(output_dim, affine=False))


class MgcaImageEncoder(nn.Module):
    def __init__(self, emb_dim, hidden_dim):
        super().__init__()
        self.model = TinyResNet()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.global_embed = GlobalEmbedding(128, hidden_dim, emb_dim)
        self.local_embed = LocalEmbedding(64, hidden_dim, emb_dim)  # interm_feature_dim = layer3 channels

    def forward(self, x, upsample299=False):  # MGCA ImageEncoder.resnet_forward, global branch
        if upsample299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return self.pool(x).flatten(1)


# --- MGCA's BERT is BLIP's med.py BertModel: no token_type_embeddings, persistent position_ids buffer,
# --- a crossattention block in every layer (config add_cross_attention=true), no pooler.
class MedSelfAttention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x, ext_mask):
        b, n, h = x.shape
        dh = h // self.heads
        split = lambda t: t.view(b, n, self.heads, dh).permute(0, 2, 1, 3)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        s = q @ k.transpose(-1, -2) / math.sqrt(dh) + ext_mask
        return (s.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, h)


class MedSelfOutput(nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.dense = nn.Linear(h, h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)


class MedAttention(nn.Module):
    def __init__(self, h, heads, eps):
        super().__init__()
        self.self = MedSelfAttention(h, heads)
        self.output = MedSelfOutput(h, eps)

    def forward(self, x, ext_mask):
        return self.output.LayerNorm(self.output.dense(self.self(x, ext_mask)) + x)


class MedIntermediate(nn.Module):
    def __init__(self, h, i):
        super().__init__()
        self.dense = nn.Linear(h, i)


class MedOutput(nn.Module):
    def __init__(self, i, h, eps):
        super().__init__()
        self.dense = nn.Linear(i, h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)


class MedLayer(nn.Module):
    def __init__(self, h, heads, inter, eps):
        super().__init__()
        self.attention = MedAttention(h, heads, eps)
        self.crossattention = MedAttention(h, heads, eps)  # unused in mode="text"
        self.intermediate = MedIntermediate(h, inter)
        self.output = MedOutput(inter, h, eps)

    def forward(self, x, ext_mask):
        a = self.attention(x, ext_mask)
        return self.output.LayerNorm(self.output.dense(F.gelu(self.intermediate.dense(a))) + a)


class MedEncoder(nn.Module):
    def __init__(self, h, layers, heads, inter, eps):
        super().__init__()
        self.layer = nn.ModuleList([MedLayer(h, heads, inter, eps) for _ in range(layers)])


class MedEmbeddings(nn.Module):
    def __init__(self, vocab, h, max_pos, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, h, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_pos, h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)
        self.register_buffer("position_ids", torch.arange(max_pos).expand((1, -1)))


class MedBertModel(nn.Module):
    def __init__(self, vocab, h=64, layers=2, heads=2, inter=128, max_pos=128, eps=1e-12):
        super().__init__()
        self.embeddings = MedEmbeddings(vocab, h, max_pos, eps)
        self.encoder = MedEncoder(h, layers, heads, inter, eps)

    def forward(self, input_ids, attention_mask, position_ids=None):
        if position_ids is None:
            position_ids = self.embeddings.position_ids[:, :input_ids.shape[1]]
        e = self.embeddings
        x = e.LayerNorm(e.word_embeddings(input_ids) + e.position_embeddings(position_ids))
        ext = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, ext)
        return x


class MgcaTextEncoder(nn.Module):
    def __init__(self, vocab, emb_dim, hidden_dim, max_pos):
        super().__init__()
        self.model = MedBertModel(vocab, max_pos=max_pos)
        self.global_embed = GlobalEmbedding(64, hidden_dim, emb_dim)
        self.local_embed = LocalEmbedding(64, hidden_dim, emb_dim)


class MGCA(nn.Module):
    def __init__(self, vocab, emb_dim=16, hidden_dim=64, num_prototypes=8, max_pos=128):
        super().__init__()
        self.img_encoder_q = MgcaImageEncoder(emb_dim, hidden_dim)
        self.text_encoder_q = MgcaTextEncoder(vocab, emb_dim, hidden_dim, max_pos)
        self.patch_local_atten_layer = nn.MultiheadAttention(emb_dim, 1, batch_first=True)
        self.word_local_atten_layer = nn.MultiheadAttention(emb_dim, 1, batch_first=True)
        self.prototype_layer = nn.Linear(emb_dim, num_prototypes, bias=False)


def fam_mgca(out: Path, facts: dict):
    from transformers import BertConfig, BertModel

    d = out / "resnet_bert_mgca"
    d.mkdir(parents=True)
    max_words, max_pos = 112, 128  # MGCA pads/truncates reports to max_words=112
    vocab = build_wordpiece_vocab("bert_base")
    tok = make_bert_tokenizer(vocab, max_words)
    save_bert_tokenizer(tok, vocab, d)

    rng = Rng(1005)
    model = MGCA(len(vocab), max_pos=max_pos).eval()
    reinit_(model, rng)
    sd = model.state_dict()
    sd = collections.OrderedDict((k, v.clone().contiguous()) for k, v in sd.items())
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
            "hyper_parameters": {"img_encoder": "resnet_50", "learning_rate": 2e-5, "emb_dim": 16},
            "optimizer_states": [], "lr_schedulers": []}
    torch.save(ckpt, str(d / "last.ckpt"))

    rows = hf_token_ids(tok, SENTENCES, max_words)
    write_token_ids(d / "token_ids.json", rows)
    enc = tok(SENTENCES[:8], padding="max_length", max_length=max_words, truncation=True, return_tensors="pt")
    ids, mask, tt = enc["input_ids"].long(), enc["attention_mask"].long(), enc["token_type_ids"].long()
    pv = rng.randn(2, 3, 64, 64)
    te = model.text_encoder_q
    with torch.no_grad():
        img = model.img_encoder_q.global_embed(model.img_encoder_q(pv))
        img299 = model.img_encoder_q.global_embed(model.img_encoder_q(pv, upsample299=True))
        # MGCA BertEncoder.forward calls self.model(ids, attn_mask, token_type, ...): the 3rd positional
        # parameter of med.BertModel.forward is position_ids, so MGCA feeds token_type_ids (all 0) as
        # position ids. text_embeds reproduces that; text_embeds_arange_positions is standard BERT.
        hs_mgca = te.model(ids, mask, position_ids=tt)
        hs_std = te.model(ids, mask)
        txt = te.global_embed(hs_mgca[:, 0])
        txt_std = te.global_embed(hs_std[:, 0])
        # cross-check the med.py re-implementation against transformers' BertModel
        bcfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=max_pos, pad_token_id=0)
        hfb = BertModel(bcfg, add_pooling_layer=False).eval()
        tsd = {k[len("text_encoder_q.model."):]: v for k, v in sd.items() if k.startswith("text_encoder_q.model.")
               and ".crossattention." not in k and not k.endswith("position_ids")}
        tsd["embeddings.token_type_embeddings.weight"] = torch.zeros(2, 64)
        missing, unexpected = hfb.load_state_dict(tsd, strict=False)
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
        ref = hfb(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_close(hs_std, ref, "mgca med bert vs transformers BertModel", atol=1e-4)
        ref0 = hfb(input_ids=ids, attention_mask=mask, position_ids=torch.zeros_like(ids)).last_hidden_state
        assert_close(hs_mgca, ref0, "mgca med bert (zero positions) vs transformers", atol=1e-4)
        # torchvision-style trunk == torchvision's own forward pieces
        assert model.img_encoder_q.model.layer4[0].conv3.out_channels == 128

    save_reference(d / "reference.safetensors", dict(
        pixel_values=pv, image_embeds=img, input_ids=ids, attention_mask=mask, text_embeds=txt,
        token_type_ids=tt, text_embeds_arange_positions=txt_std, image_embeds_upsample299=img299))
    facts["resnet_bert_mgca"] = dict(
        files=sorted(p.name for p in d.iterdir()),
        checkpoint_top_level_keys=list(ckpt.keys()),
        keys=list(sd.keys()),
        image_trunk="torchvision ResNet with torchvision Bottleneck (stride on the 3x3 conv), stem 3->8 7x7/2 + "
                    "maxpool 3/2, planes 4/8/16/32 -> outputs 16/32/64/128, strides 1/2/2/2, downsample = "
                    "conv1x1(stride)+BN in every stage (index .0 and .1 of downsample), fc removed (Identity)",
        batchnorm_eps=1e-5,
        image_pooling="AdaptiveAvgPool2d(1) of layer4, flatten -> global_embed.head: 0 Linear(128,64) -> "
                      "1 BatchNorm1d(64) -> 2 ReLU -> 3 Linear(64,16) -> 4 BatchNorm1d(16, affine=False; only "
                      "running_mean/var/num_batches_tracked keys)",
        image_embeds_upsample299="MGCA's resnet_forward first does nn.Upsample((299,299), bilinear, "
                                 "align_corners=True); image_embeds does NOT (input used as-is, per the brief), "
                                 "image_embeds_upsample299 does",
        text_model="MGCA/BLIP med.py BertModel: embeddings.{word_embeddings,position_embeddings,LayerNorm} "
                   "(NO token_type_embeddings) + persistent int64 buffer embeddings.position_ids [1,128]; every "
                   "layer has an unused crossattention.* block; no pooler; GELU exact; LN eps 1e-12; "
                   "mask (1-m)*-10000",
        text_pooling="CLS (position 0) of last_hidden_state -> text global_embed.head (Linear(64,64), BN(64), "
                     "ReLU, Linear(64,16), BN(16, affine=False))",
        position_ids_quirk="MGCA calls med BertModel as self.model(ids, attn_mask, token_type, ...): token_type_ids "
                           "(all zeros) land in the position_ids slot, so EVERY token gets position_embeddings[0]. "
                           "text_embeds reproduces MGCA exactly (pass position_ids = 0); "
                           "text_embeds_arange_positions is the standard-BERT variant for comparison",
        extra_keys_to_ignore=["img_encoder_q.local_embed.*", "text_encoder_q.local_embed.*",
                              "text_encoder_q.model.encoder.layer.N.crossattention.*",
                              "text_encoder_q.model.embeddings.position_ids (int64)",
                              "patch_local_atten_layer.*", "word_local_atten_layer.*", "prototype_layer.weight",
                              "*.num_batches_tracked (int64)"],
        bert=dict(hidden=64, layers=2, heads=2, intermediate=128, max_position_embeddings=max_pos,
                  vocab_size=len(vocab), special_ids=dict(pad=0, unk=100, cls=101, sep=102, mask=103)),
        context_length=max_words, padding="[PAD]=0 to max_length 112 (MGCA max_words)",
        logit_scale="none (MGCA uses a fixed softmax_temperature 0.07)",
        dataset_note="MGCA's pretraining dataset lower-cases reports and keeps only \\w+ tokens joined by spaces "
                     "before the tokenizer; the fixture tokenizes the raw sentences",
        real_mgca=dict(resnet="resnet50 (2048-d)", hidden_dim=2048, emb_dim=128, bert="Bio_ClinicalBERT 6 "
                       "layers (bert_config.json), vocab 28996", input="224 -> upsampled to 299"),
    )


# ----------------------------------------------------------------------------------------------
# f. hf_dual_encoder
# ----------------------------------------------------------------------------------------------
def fam_dual_encoder(out: Path, facts: dict):
    import transformers
    from transformers import (BertConfig, ViTConfig, ViTImageProcessor, VisionTextDualEncoderConfig,
                              VisionTextDualEncoderModel)

    d = out / "hf_dual_encoder"
    d.mkdir(parents=True)
    ctx = 64
    vocab = build_wordpiece_vocab("biomedbert")
    tok = make_bert_tokenizer(vocab, ctx)
    save_bert_tokenizer(tok, vocab, d)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(str(d))

    vcfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     image_size=32, patch_size=8)
    tcfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=ctx, pad_token_id=0)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vcfg, tcfg, projection_dim=32)
    rng = Rng(1006)
    model = VisionTextDualEncoderModel(config=config).eval()
    reinit_(model, rng, logit_scale=2.6592 + 0.25)
    model.save_pretrained(str(d), safe_serialization=True)

    rows = hf_token_ids(tok, SENTENCES, ctx)
    write_token_ids(d / "token_ids.json", rows)
    enc = tok(SENTENCES[:8], padding="max_length", max_length=ctx, truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    pv = rng.randn(2, 3, 32, 32)
    with torch.no_grad():
        io_ = model.get_image_features(pixel_values=pv)
        to_ = model.get_text_features(input_ids=ids, attention_mask=mask)
        img = io_.pooler_output if not torch.is_tensor(io_) else io_
        txt = to_.pooler_output if not torch.is_tensor(to_) else to_
        full = model(input_ids=ids, attention_mask=mask, pixel_values=pv)
        assert_close(F.normalize(img, dim=-1), full.image_embeds, "dual image vs forward")
        assert_close(F.normalize(txt, dim=-1), full.text_embeds, "dual text vs forward")
        vm, tm = model.vision_model, model.text_model
        cls = vm(pixel_values=pv).last_hidden_state[:, 0]  # after ViT final layernorm
        man_img = model.visual_projection(torch.tanh(vm.pooler.dense(cls)))
        assert_close(man_img, img, "dual manual image")
        tcls = tm(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        man_txt = model.text_projection(torch.tanh(tm.pooler.dense(tcls)))
        assert_close(man_txt, txt, "dual manual text")
        m2 = VisionTextDualEncoderModel.from_pretrained(str(d)).eval()
        assert_close(m2.get_image_features(pixel_values=pv).pooler_output, img, "dual reload image")
        assert_close(m2.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, txt,
                     "dual reload text")
    save_reference(d / "reference.safetensors", dict(
        pixel_values=pv, image_embeds=img, input_ids=ids, attention_mask=mask, text_embeds=txt,
        logit_scale=model.logit_scale.detach().reshape(()).clone()))
    disk_keys = file_keys(d / "model.safetensors")
    mem_keys = list(model.state_dict().keys())
    facts["hf_dual_encoder"] = dict(
        files=sorted(p.name for p in d.iterdir()),
        keys=disk_keys,
        in_memory_only_key_examples=sorted(set(mem_keys) - set(disk_keys))[:8],
        key_naming_note=f"transformers {transformers.__version__} builds ViTModel with modules "
                        "vision_model.layers.N.attention.{q,k,v,o}_proj / mlp.fc1/fc2, but save_pretrained converts "
                        "them back to the classic checkpoint names vision_model.encoder.layer.N.attention.attention."
                        "{query,key,value}, attention.output.dense, intermediate.dense, output.dense (what this "
                        "model.safetensors holds and what from_pretrained expects)",
        projection_keys=["visual_projection.weight [32, 64] (no bias)", "text_projection.weight [32, 64] (no bias)",
                         "logit_scale []"],
        pooling_keys=["vision_model.pooler.dense.{weight,bias}", "text_model.pooler.dense.{weight,bias}"],
        image_pooling="ViTModel pooler_output = tanh(pooler.dense(layernorm(last_hidden)[:, 0])) -> visual_projection",
        text_pooling="BertModel pooler_output = tanh(pooler.dense(last_hidden[:, 0])) -> text_projection",
        get_features_return_type=type(io_).__name__ + " (projected tensor in .pooler_output)",
        vit=dict(hidden=64, layers=2, heads=2, intermediate=128, image_size=32, patch_size=8,
                 layer_norm_eps=vcfg.layer_norm_eps, act=vcfg.hidden_act, qkv_bias=vcfg.qkv_bias,
                 keys_prefix="vision_model.{embeddings,encoder,layernorm,pooler}"),
        bert=dict(hidden=64, layers=2, heads=2, intermediate=128, max_position_embeddings=ctx,
                  layer_norm_eps=tcfg.layer_norm_eps, act=tcfg.hidden_act, vocab_size=len(vocab),
                  special_ids=dict(pad=0, unk=1, cls=2, sep=3, mask=4)),
        context_length=ctx, padding="[PAD]=0 to max_length 64",
        normalisation=dict(mean=[0.5] * 3, std=[0.5] * 3, note="preprocessor_config.json (ViTImageProcessor)"),
        logit_scale_init_value_default=2.6592,
    )


# ----------------------------------------------------------------------------------------------
# g. bad
# ----------------------------------------------------------------------------------------------
class Evil:
    """Unpickling this runs os.system -- a loader must refuse it. Never loaded here."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


class TinyScripted(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def fam_bad(out: Path, facts: dict):
    d = out / "bad"
    d.mkdir(parents=True)
    torch.save([1, 2, 3, 4], str(d / "not_a_state_dict.pt"))
    g = Rng(1007)
    torch.save(collections.OrderedDict([("fc.weight", g.randn(2, 4)), ("evil", Evil()), ("step", 7)]),
               str(d / "non_tensor.pt"))
    torch.manual_seed(1007)
    torch.jit.save(torch.jit.script(TinyScripted().eval()), str(d / "torchscript.pt"))
    facts["bad"] = dict(
        not_a_state_dict="torch.save([1, 2, 3, 4])",
        non_tensor="torch.save(OrderedDict(fc.weight=Tensor[2,4], evil=Evil() whose __reduce__ is "
                   "(os.system, ('echo pwned',)) -> pickled as GLOBAL 'posix system', step=7 (plain int)))",
        torchscript="torch.jit.save(torch.jit.script(Linear(4,2) module))",
    )


# ----------------------------------------------------------------------------------------------
def versions():
    import ftfy, open_clip, regex, safetensors, timm, tokenizers, torchvision, transformers

    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                transformers=transformers.__version__, tokenizers=tokenizers.__version__,
                open_clip_torch=open_clip.__version__, timm=timm.__version__, safetensors=safetensors.__version__,
                numpy=np.__version__, ftfy=ftfy.__version__, regex=regex.__version__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--merges", type=int, default=N_MERGES_DEFAULT, help="BPE merges kept (default 2000)")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    families = ["clip_openai", "clip_hf", "open_clip_timm_hf", "open_clip_builtin", "resnet_bert_mgca",
                "hf_dual_encoder", "bad"]
    for f in families:
        if (out / f).exists():
            shutil.rmtree(out / f)

    (out / "sentences.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    bpe_gz, header, merges = make_truncated_bpe(args.merges)
    facts = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        openai_tok = fam_clip_openai(out, bpe_gz, args.merges, facts)
        openai_rows = openai_token_ids(openai_tok, SENTENCES, 77)
        fam_clip_hf(out, merges, args.merges, facts, openai_rows)
        fam_open_clip_timm_hf(out, facts, tmp)
        fam_open_clip_builtin(out, bpe_gz, args.merges, facts, openai_tok)
        fam_mgca(out, facts)
        fam_dual_encoder(out, facts)
        fam_bad(out, facts)

    facts["_common"] = dict(
        bpe=dict(source="open_clip/bpe_simple_vocab_16e6.txt.gz", header=header, merges_kept=args.merges,
                 vocab_size=256 * 2 + args.merges + 2, trailing_newline=False,
                 vocab_order="256 byte chars (bytes_to_unicode order), the same + '</w>', merged pairs, "
                             "<|startoftext|>, <|endoftext|>",
                 note="open_clip SimpleTokenizer reads merges[1:49152-256-2+1]; a short file is honoured as long "
                      "as it has no trailing newline (an empty last line becomes an extra '' vocab entry). Its "
                      "special-token strings are '<start_of_text>'/'<end_of_text>' but the ids are the same (last "
                      "two)"),
        truncation="sentences 5 and 50 exceed the context length of every family; sentence 5 is row 5 of the "
                   "reference input_ids, so every reference batch contains one truncated row",
        seeds=dict(clip_openai=1001, clip_hf=1002, open_clip_timm_hf=1003, open_clip_builtin=1004,
                   resnet_bert_mgca=1005, hf_dual_encoder=1006, bad=1007),
        init="every parameter re-drawn: norm weights 1+0.1N, norm biases 0.1N, embeddings 0.5N, other 1-D 0.05N, "
             "matrices N/sqrt(fan_in); BN running_mean 0.1N, running_var U(0.5,1.5), num_batches_tracked 120",
    )
    write_json(out / "versions.json", dict(generator="scripts/gen_interop_fixtures.py",
                                           command="/root/venvs/interop/bin/python scripts/gen_interop_fixtures.py "
                                                   "--out crates/medvlp-model/tests/data/interop",
                                           versions=versions(), families=facts))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
