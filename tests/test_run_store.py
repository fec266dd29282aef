"""The run store: a run is reused only under the settings that made it, nothing finished is
lost when a process dies, two processes never compute one run twice, and a corrupt store
is named, not overwritten."""

import os
import sqlite3
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

import pyro_grad as pg
import pyro_grad.harness.comparison.svi_compare as compare_module
import pyro_grad.harness.comparison.fits as fits_module
from pyro_grad.harness.models import coin
from pyro_grad.harness.comparison.identity import FitIdentity
from pyro_grad.harness.comparison import store as store_module
from pyro_grad.harness.comparison.store import FitStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stored_fits(out) -> int:
    with sqlite3.connect(out / "fits.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM fits").fetchone()[0]


def coin_compare(out, configs=None, **settings):
    settings = {"num_steps": 5, "seeds": (0,), **settings}
    return pg.compare(coin.model, coin.guide, coin.DATA, configs=configs or {"rep": pg.Reparam()}, out=str(out),
                      **settings)


def test_a_stored_run_is_reused_only_when_every_setting_matches(tmp_path):
    first = coin_compare(tmp_path)
    again = coin_compare(tmp_path)
    assert again.origin == {("rep", 0): "reused"}
    assert again.fits[("rep", 0)]["elbo"] == first.fits[("rep", 0)]["elbo"]
    # More steps: the 5-step run is not returned as an 8-step one.
    longer = coin_compare(tmp_path, num_steps=8)
    assert longer.origin == {("rep", 0): "recomputed"} and len(longer.fits[("rep", 0)]["elbo"]) == 8
    # The same label with another estimator shows that estimator's own numbers.
    relabelled = coin_compare(tmp_path, configs={"rep": pg.Score("loo")})
    assert relabelled.origin == {("rep", 0): "recomputed"}
    assert relabelled.summary().iloc[0]["estimators"] == "Score(baseline='loo')"
    assert relabelled.fits[("rep", 0)]["elbo"] != first.fits[("rep", 0)]["elbo"]
    assert "0 fits reused from the store, 1 recomputed" in relabelled.provenance()
    # Nothing stored was lost: the first settings find their run again.
    assert coin_compare(tmp_path).origin == {("rep", 0): "reused"}
    assert stored_fits(tmp_path) == 3


def identity(**changes):
    shared = dict(model=coin.model, guide=coin.guide, args=(coin.DATA,), kwargs={}, num_steps=5, num_particles=4,
                  diagnose_every=None, optim=pyro.optim.Adam({"lr": 0.01}), reset=None)
    return FitIdentity(**{**shared, **changes})


def another_coin_model(data):
    f = pyro.sample("f", pyro.distributions.Beta(11.0, 10.0))
    with pyro.plate("tosses", len(data)):
        pyro.sample("obs", pyro.distributions.Bernoulli(f), obs=data)


def test_the_digest_changes_with_every_setting_that_determines_a_run():
    base = identity().digest({"f": pg.Score("loo")}, 0)
    changed = {
        "data": identity(args=(1 - coin.DATA,)).digest({"f": pg.Score("loo")}, 0),
        "model source": identity(model=another_coin_model).digest({"f": pg.Score("loo")}, 0),
        "guide": identity(guide="AutoGuide").digest({"f": pg.Score("loo")}, 0),
        "steps": identity(num_steps=6).digest({"f": pg.Score("loo")}, 0),
        "particles": identity(num_particles=2).digest({"f": pg.Score("loo")}, 0),
        "optimizer": identity(optim=pyro.optim.Adam({"lr": 0.02})).digest({"f": pg.Score("loo")}, 0),
        "optimizer class": identity(optim=pyro.optim.SGD({"lr": 0.01})).digest({"f": pg.Score("loo")}, 0),
        "estimator": identity().digest({"f": pg.Score("decay")}, 0),
        "seed": identity().digest({"f": pg.Score("loo")}, 1),
    }
    assert all(digest != base for digest in changed.values()), changed
    assert len(set(changed.values())) == len(changed)
    # A baseline network is identified by its weights, not by its (address-free) repr.
    net = torch.nn.Linear(1, 1)
    before = identity().digest({"f": pg.Score(net)}, 0)
    with torch.no_grad():
        net.bias += 1.0
    assert identity().digest({"f": pg.Score(net)}, 0) != before


def test_two_lambdas_on_one_line_and_two_objects_of_one_class_have_their_own_digests():
    first, second = (lambda msg: pg.Reparam()), (lambda msg: pg.Score("loo"))  # one source line
    assert identity().digest(first, 0) != identity().digest(second, 0)

    class Guide:
        def __init__(self, scale):
            self.scale = scale

        def __call__(self, data):
            pass

    assert identity(guide=Guide(0.1)).digest(None, 0) != identity(guide=Guide(0.2)).digest(None, 0)


def test_module_globals_a_program_reads_are_part_of_its_digest():
    # The same source, run with SCALE = 1 or 2: different programs.
    source = "def model(data):\n    return SCALE * helper(data)\ndef helper(data):\n    return OFFSET + data\n"
    programs = []
    for scale, offset in ((1.0, 0.0), (2.0, 0.0), (1.0, 5.0)):
        namespace = {"SCALE": scale, "OFFSET": offset}
        exec(source, namespace)
        programs.append(namespace["model"])
    digests = {identity(model=m).digest(None, 0) for m in programs}
    assert len(digests) == 3  # the helper's global counts too


def test_the_digest_is_the_same_in_every_process():
    script = textwrap.dedent("""
        import pyro, pyro_grad as pg
        from pyro_grad.harness.models import coin
        from pyro_grad.harness.comparison.identity import FitIdentity
        identity = FitIdentity(model=coin.model, guide=coin.guide, args=(coin.DATA,), kwargs={}, num_steps=5,
                               num_particles=4, diagnose_every=None, optim=pyro.optim.Adam({"lr": 0.01}), reset=None)
        print(identity.digest({"f": pg.Score("loo"), "sites": frozenset({"f", "g", "h"})}, 0))
    """)
    # Two hash seeds: set order differs between them, the digest must not.
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert digests == {identity().digest({"f": pg.Score("loo"), "sites": frozenset({"f", "g", "h"})}, 0)}


CONFIGS_SCRIPT = """
import os, signal, sys
import pyro_grad as pg
from pyro_grad.harness.models import coin
from pyro_grad.harness.comparison import store
# Four distinct configs (beta is part of each one's identity), so four distinct runs.
configs = {f"c{i}": pg.Score("loo", beta=0.5 + i / 10) for i in range(4)}
"""


def test_a_killed_process_loses_no_finished_run_and_its_claim_expires(tmp_path):
    # The subprocess kills itself (SIGKILL: no cleanup) right after claiming its third
    # run, with two runs stored: a known point, not a timed one.
    script = CONFIGS_SCRIPT + textwrap.dedent(f"""
        claim, claims = store.FitStore.claim, []
        def claim_then_die(self, digest):
            claimed = claim(self, digest)
            claims.append(digest)
            if len(claims) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return claimed
        store.FitStore.claim = claim_then_die
        pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=10, seeds=(0,), out={str(tmp_path)!r})
    """)
    process = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.DEVNULL)
    assert process.returncode == -9
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM fits").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 1  # the dead process's
    configs = {f"c{i}": pg.Score("loo", beta=0.5 + i / 10) for i in range(4)}
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=10, seeds=(0,), out=str(tmp_path))
    assert sorted(result.origin.values()) == ["new", "new", "reused", "reused"]
    assert all(r["status"] == "finished" and len(r["elbo"]) == 10 for r in result.fits.values())
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def test_two_processes_on_one_out_compute_each_run_once(tmp_path):
    log = tmp_path / "computed.log"
    # A barrier: each process starts comparing only once both are up, so they overlap.
    script = CONFIGS_SCRIPT + textwrap.dedent(f"""
        import pathlib, time
        ready = pathlib.Path({str(tmp_path)!r}) / f"ready-{{os.getpid()}}"
        ready.touch()
        deadline = time.time() + 120
        while len(list(ready.parent.glob("ready-*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        put = store.FitStore.put
        def put_and_log(self, digest, config, seed, record):
            put(self, digest, config, seed, record)
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}} {{config}}\\n")
        store.FitStore.put = put_and_log
        result = pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=10, seeds=(0,),
                            out={str(tmp_path / "out")!r})
        print(len(result.fits), all(r["status"] == "finished" for r in result.fits.values()))
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                  stderr=subprocess.DEVNULL) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].split() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert outputs == [["4", "True"], ["4", "True"]]  # each process returns every run
    computed = [line.split()[1] for line in log.read_text().splitlines()]
    assert sorted(computed) == ["c0", "c1", "c2", "c3"]  # and each run was computed once


def test_a_run_claimed_by_a_live_process_is_waited_for_not_recomputed(tmp_path, monkeypatch):
    held = {}
    claim = FitStore.claim

    def claim_unless_first(store, digest):
        if not held:  # as if another live process had claimed this run first
            held.update(store=store, digest=digest)
            return "held"
        return claim(store, digest)

    others_record = {"status": "finished", "reason": "", "step": 5, "elbo": [-7.0] * 5, "checkpoints": [],
                     "seconds": 1.0, "cpu seconds": 1.0, "evaluations": 20, "posterior": {}, "notes": []}

    def the_other_process_finishes(seconds):
        held["store"].put(held["digest"], "rep", 0, others_record)

    computed = []
    fit_one = fits_module.fit_one

    def counting_run_one(*args, **kwargs):
        if kwargs.get("posterior", True):  # a timed run, not the warm-up
            computed.append(args[4])
        return fit_one(*args, **kwargs)

    monkeypatch.setattr(FitStore, "claim", claim_unless_first)
    monkeypatch.setattr(compare_module.time, "sleep", the_other_process_finishes)
    monkeypatch.setattr(fits_module, "fit_one", counting_run_one)
    result = coin_compare(tmp_path, configs={"rep": pg.Reparam(), "loo": pg.Score("loo")})
    assert result.fits[("rep", 0)]["elbo"] == [-7.0] * 5  # the other process's run
    assert computed == [pg.Score("loo")]  # only the unclaimed run was computed here


def test_a_store_that_is_not_a_database_is_named_and_left_untouched(tmp_path):
    junk = os.urandom(4096)
    (tmp_path / "fits.sqlite").write_bytes(junk)
    with pytest.raises(pg.EstimatorError, match=r"fits.sqlite cannot be used \(file is not a database\).*move"):
        coin_compare(tmp_path)
    assert (tmp_path / "fits.sqlite").read_bytes() == junk


def test_a_corrupt_row_is_named_and_kept(tmp_path):
    coin_compare(tmp_path)
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        db.execute("UPDATE fits SET record = substr(record, 1, 40)")
    with pytest.raises(pg.EstimatorError, match="the stored fit of config 'rep', seed 0 is corrupt"):
        coin_compare(tmp_path)
    assert stored_fits(tmp_path) == 1


def test_a_store_from_before_digests_is_kept_aside_and_never_reused(tmp_path):
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        db.execute("CREATE TABLE fits (config TEXT, seed INTEGER, record TEXT, PRIMARY KEY (config, seed))")
        db.execute("INSERT INTO fits VALUES ('rep', 0, '{}')")
    assert coin_compare(tmp_path).origin == {("rep", 0): "new"}
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        assert db.execute("SELECT config FROM fits_without_digests").fetchall() == [("rep",)]


def test_a_claim_is_live_while_its_process_runs_and_its_heartbeat_is_fresh(tmp_path):
    import socket
    import time

    store = FitStore(str(tmp_path))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now, stale = time.time(), time.time() - 2 * store_module.CLAIM_TIMEOUT
    claims = {
        "live here": (socket.gethostname(), sleeper.pid, now),
        "dead here": (socket.gethostname(), dead.pid, now),
        "fresh elsewhere": ("another-host", 1, now),
        "silent elsewhere": ("another-host", 1, stale),
    }
    try:
        with sqlite3.connect(tmp_path / "fits.sqlite") as db:
            db.executemany("INSERT INTO claims VALUES (?, ?, ?, ?)", [(k, *v) for k, v in claims.items()])
        assert {k: store.claim(k) for k in claims} == {
            "live here": "held", "dead here": "claimed", "fresh elsewhere": "held", "silent elsewhere": "claimed",
        }
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_interrupted_run_releases_its_claim(tmp_path, monkeypatch):
    fit_one = fits_module.fit_one

    def interrupted_when_timed(*args, **kwargs):
        if kwargs.get("posterior", True):
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run
        return fit_one(*args, **kwargs)

    monkeypatch.setattr(fits_module, "fit_one", interrupted_when_timed)
    with pytest.raises(KeyboardInterrupt):
        coin_compare(tmp_path)
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM fits").fetchone()[0] == 0
