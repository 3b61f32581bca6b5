"""An encode killed midway keeps every batch it finished: the rerun encodes only the rest (MiniLM,
a real process killed with SIGKILL while it writes the embedding cache)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from rocksdict import AccessType, Options, Rdict

from config.settings import EncoderSettings
from encoder.content import ContentEncoder, batch_plan
from tests.gen_data import WORDS

N = 300


def prompts() -> list[str]:
    import random

    rng = random.Random(3)
    return [f"Title: item {i} " + " ".join(rng.choices(WORDS, k=20 + i % 20)) for i in range(N)]


CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from config.settings import EncoderSettings
    from encoder.content import ContentEncoder
    from tests.unit.test_encode_resume import prompts
    enc = ContentEncoder(EncoderSettings(model="minilm", batch_size=2), models_path=sys.argv[2], cache=sys.argv[1])
    enc.encode(prompts())
    print("finished")
""")


def stored(path) -> int:
    if not path.exists():
        return 0
    try:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    except Exception:  # not created yet
        return 0
    n = sum(1 for _ in db.keys())
    db.close()
    return n


def test_batch_plan_cuts_in_length_order_and_mixes_long_and_short():
    lengths = np.arange(1, 101)
    batches = batch_plan(lengths, batch_size=10)
    assert sorted(sorted(lengths[b].tolist()) for b in batches) == [list(range(k, k + 10)) for k in range(1, 101, 10)]
    first_half = np.concatenate(batches[:5])
    assert 0.3 < lengths[first_half].sum() / lengths.sum() < 0.7  # not the longest first: the rate seen early is fair
    assert [b.tolist() for b in batch_plan(lengths, 10)] == [b.tolist() for b in batches]  # seeded


@pytest.mark.slow
def test_an_interrupted_encode_resumes_where_it_stopped(tmp_path):
    cache = tmp_path / "cache"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cache), str(tmp_path / "models")], cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while stored(cache) < 10 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate()
    assert b"finished" not in out, "the encode ended before it could be interrupted"
    kept = stored(cache)
    assert 10 <= kept < N, (kept, err[-2000:])

    enc = ContentEncoder(EncoderSettings(model="minilm", batch_size=16), models_path=tmp_path / "models", cache=cache)
    vecs = enc.encode(prompts())
    assert (enc.last_stats.cache_hits, enc.last_stats.encoded) == (kept, N - kept)
    fresh = ContentEncoder(EncoderSettings(model="minilm", batch_size=16), models_path=tmp_path / "models", cache=None)
    sample = list(range(0, N, 37))
    again = fresh.encode([prompts()[i] for i in sample])
    assert np.allclose(vecs[sample], again, atol=1e-4)  # what the killed run kept is what a full run computes
