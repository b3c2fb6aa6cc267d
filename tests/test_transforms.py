"""Each transform on its own (torch_grouper.transforms), then composed, in
DataLoader workers; tokenizers and language-model packing."""
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import torch_grouper as tg
from torch_grouper.dataset import Group
from torch_grouper.transforms import (Batch, ByteTokenizer, CharTokenizer, Compose, PackTokens, Repeat,
                                      ShuffleExamples, Take, ToTorch, client_pipeline, collate_dicts)


def ids(g):
    return [e["i"] for e in g]


def group(n, gid="u"):
    return Group(gid, [{"i": i, "x": np.full(3, i, np.float32), "s": f"e{i}"} for i in range(n)])


def test_shuffle_examples_is_seeded_by_seed_and_group():
    g = Group("u", list(range(12)))
    assert list(ShuffleExamples(0)(g)) == [2, 0, 8, 11, 5, 1, 7, 10, 9, 3, 6, 4]  # stable across releases
    assert list(ShuffleExamples(1)(Group(7, list(range(12))))) == [11, 0, 7, 6, 5, 8, 2, 10, 9, 3, 1, 4]
    a = ShuffleExamples(3)(group(40))
    assert ids(a) == ids(ShuffleExamples(3)(group(40))) and sorted(ids(a)) == list(range(40))
    assert ids(a) != ids(ShuffleExamples(4)(group(40)))  # another seed
    assert ids(a) != ids(ShuffleExamples(3)(group(40, gid="v")))  # another group
    assert a.id == "u" and ids(ShuffleExamples(3)(group(40))) != list(range(40))
    assert list(ShuffleExamples(0)(Group("e", []))) == []


def test_take_and_repeat():
    g = group(5)
    assert ids(Take(3)(g)) == [0, 1, 2] and ids(Take(0)(g)) == [] and ids(Take(9)(g)) == [0, 1, 2, 3, 4]
    assert Take(3)(g).id == "u" and len(Take(3)(g)) == 3
    assert ids(Repeat(3)(Take(2)(g))) == [0, 1, 0, 1, 0, 1] and ids(Repeat(1)(g)) == ids(g)
    with pytest.raises(ValueError, match="Take: n must be >= 0, got -1"):
        Take(-1)
    with pytest.raises(ValueError, match="Repeat: k must be >= 1, got 0"):
        Repeat(0)


def test_collate_dicts_stacks_equal_shapes_only():
    b = collate_dicts([{"x": np.zeros(2), "v": np.zeros(1), "s": "a"}, {"x": np.ones(2), "v": np.zeros(3), "s": "b"}])
    assert b["x"].shape == (2, 2) and b["x"][1].tolist() == [1, 1]
    assert isinstance(b["v"], list) and [v.shape for v in b["v"]] == [(1,), (3,)] and b["s"] == ["a", "b"]


def test_batch_with_and_without_drop_last():
    g = group(10)
    bs = Batch(4)(g)
    assert [b["i"] for b in bs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert bs[0]["x"].shape == (4, 3) and bs[2]["x"].shape == (2, 3) and bs[1]["s"] == ["e4", "e5", "e6", "e7"]
    assert [b["i"] for b in Batch(4, drop_last=True)(g)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b["i"] for b in Batch(5, drop_last=True)(g)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert Batch(4, drop_last=True)(group(3)) == [] and Batch(4)(group(0)) == []
    assert Batch(3, collate_fn=len)(g) == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="Batch: batch_size must be >= 1, got 0"):
        Batch(0)


def test_to_torch_on_groups_and_batches():
    g = ToTorch()(Group("u", [{"x": np.arange(3), "n": np.int64(4), "s": "a", "i": 5}]))
    (ex,) = g.examples()
    assert g.id == "u" and torch.equal(ex["x"], torch.arange(3)) and torch.is_tensor(ex["n"])
    assert ex["s"] == "a" and ex["i"] == 5  # default_convert leaves Python values alone
    (b,) = ToTorch()(Batch(2)(group(2)))
    assert b["x"].dtype == torch.float32 and b["x"].shape == (2, 3) and b["i"] == [0, 1]


def test_compose_applies_in_order():
    assert ids(Compose(Take(4), Repeat(2))(group(9))) == [0, 1, 2, 3] * 2
    assert ids(Compose(Repeat(2), Take(4))(group(9))) == [0, 1, 2, 3]
    assert Compose()(5) == 5


def test_client_pipeline():
    g = group(50)
    out = client_pipeline(seed=0, take=10, epochs=2, batch_size=8)(g)
    shuffled = ids(ShuffleExamples(0)(g))[:10]
    assert [i for b in out for i in b["i"]] == shuffled * 2 and [len(b["i"]) for b in out] == [8, 8, 4]
    assert ids(client_pipeline(seed=None, take=3)(g)) == [0, 1, 2]
    t = client_pipeline(seed=None, batch_size=4, drop_last=True, to_torch=True)(group(10))
    assert len(t) == 2 and torch.equal(t[1]["i"], torch.tensor([4, 5, 6, 7])) and t[0]["x"].shape == (4, 3)
    assert t[0]["s"] == ["e0", "e1", "e2", "e3"]  # default_collate keeps strings as lists
    (ex, *_) = client_pipeline(seed=None, to_torch=True)(group(3)).examples()
    assert torch.is_tensor(ex["x"]) and ex["i"] == 0
    own = client_pipeline(seed=None, batch_size=5, collate_fn=len, to_torch=True)(group(7))
    assert own == [5, 2]  # a collate_fn of one's own decides; to_torch adds nothing
    pipe = client_pipeline(seed=1, take=7, epochs=3, batch_size=4)
    again = pickle.loads(pickle.dumps(pipe))  # transforms run in DataLoader workers
    assert [b["i"] for b in again(g)] == [b["i"] for b in pipe(g)]


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


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",))), alphabet=st.text(min_size=1, max_size=20))
def test_tokenizers_round_trip(text, alphabet):
    tok = ByteTokenizer()
    ids_ = tok(text)
    assert ids_.dtype == np.int64 and len(ids_) == len(text.encode("utf-8"))
    assert ((2 <= ids_) & (ids_ < tok.vocab_size)).all() and tok.decode(ids_) == text
    alphabet = "".join(dict.fromkeys(alphabet))
    ct = CharTokenizer(alphabet)
    ours = "".join(c for c in text if c in alphabet)
    assert ct.decode(ct(text)) == ours  # characters outside the alphabet are unk (1), dropped by decode
    assert ct(text).tolist() == [alphabet.index(c) + 2 if c in alphabet else 1 for c in text]
