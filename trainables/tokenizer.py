"""CLIP's BPE tokenizer, built offline from the merges file OpenAI ships with CLIP (MIT, see
`trainables/assets/clip-bpe/LICENSE`).

Both VLSMs use CLIP's byte-level BPE (CLIPSeg through HF's CLIPTokenizer, CRIS through CLIP's own
simple tokenizer; they produce the same ids). CLIP's vocabulary is fully determined by the merges list, so we
derive it in memory and never touch the network. A real checkpoint directory that carries its own tokenizer files takes
precedence (see the adapters).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

BPE_PATH = Path(__file__).parent / "assets" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408  # 256 bytes x 2 (with/without </w>) + 48,894 merges + 2 specials


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable unicode map: printable bytes map to themselves, the rest
    # are shifted above 255 so that BPE never sees whitespace or control characters.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(BPE_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the header line, then exactly the merges CLIP uses
    units = list(_bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=4)
def clip_tokenizer(model_max_length: int = 77):
    """HF `CLIPTokenizer` equal to OpenAI CLIP's (`a photo of a` -> 320, 1125, 539, 320)."""
    from transformers import CLIPTokenizer

    # transformers 5 builds the `tokenizers` backend straight from the vocab dict and merges list.
    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=model_max_length)
