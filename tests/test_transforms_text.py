"""Tokenize and pack a group's text into language-model blocks."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import torch_grouper as tg
from torch_grouper.dataset import Group
from torch_grouper.transforms import ByteTokenizer, CharTokenizer, PackTokens


def test_pack_tokens_blocks_are_the_joined_stream_shifted_by_one():
    g = Group("u", [{"text": "hello"}, {"text": "wörlds"}])
    tok = ByteTokenizer()
    out = PackTokens(4, tok)(g)
    stream = np.concatenate([tok("hello"), [1], tok("wörlds"), [1]])
    assert len(stream) == 14 and len(out) == 3  # (14 - 1) // 4 full blocks, the rest dropped
    for k, ex in enumerate(out):
        assert ex["inputs"].tolist() == stream[4 * k:4 * k + 4].tolist()
        assert ex["targets"].tolist() == stream[4 * k + 1:4 * k + 5].tolist()
    padded = PackTokens(4, tok, remainder="pad")(g)
    assert len(padded) == 4
    assert padded.examples()[-1]["inputs"].tolist() == [stream[12], 0, 0, 0]
    assert padded.examples()[-1]["targets"].tolist() == [stream[13], -100, -100, -100]
    loss = torch.nn.functional.cross_entropy(torch.zeros(4, 300), torch.as_tensor(padded.examples()[-1]["targets"]))
    assert torch.isfinite(loss)  # ignore_index is skipped


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(max_size=30), max_size=8), n=st.integers(1, 9))
def test_pack_tokens_round_trip(texts, n):
    tok = ByteTokenizer()
    out = PackTokens(n, tok, remainder="pad")(Group("g", [{"text": t} for t in texts])).examples()
    stream = np.concatenate([np.concatenate([tok(t), [1]]) for t in texts]) if texts else np.zeros(0, np.int64)
    got = [int(x) for ex in out for x in ex["inputs"] if x != 0]
    assert got == stream[:-1].tolist() if len(stream) > 1 else got == []
    assert tok.decode(tok("ab€")) == "ab€"


def test_char_tokenizer_and_errors():
    tok = CharTokenizer("abc ")
    assert tok("ab z").tolist() == [2, 3, 5, 1] and tok.vocab_size == 6 and tok.decode(tok("cab")) == "cab"
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aa")
    with pytest.raises(KeyError, match="group 'u' has an example without field 'text'"):
        PackTokens(4)(Group("u", [{"body": "x"}]))
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        PackTokens(0)


def test_pack_tokens_in_dataloader_workers(tmp_path):
    exs = [{"g": f"u{i % 3}", "text": "to be or not to be " * (i % 5 + 1)} for i in range(60)]
    tg.partition(exs, "g", tmp_path / "o", progress=False)
    ds = tg.GroupedDataset(tmp_path / "o").map_groups(
        tg.transforms.Compose(PackTokens(16), tg.transforms.Batch(8, drop_last=True), tg.transforms.ToTorch()))
    batches = [b for bs in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2) for b in bs]
    assert batches and all(b["inputs"].shape == (8, 16) and b["targets"].dtype == torch.int64 for b in batches)
