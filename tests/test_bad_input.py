"""Bad input never costs work: every TrainConfig field against NaN, inf, negative, zero and wrong types.

The cases are generated from TrainConfig's fields, so a field added later is
covered at once: it must refuse each bad kind with a message naming it, or be
listed here as accepting that kind. The same values through the command line
must end with exit code 2 and no traceback, in-process (no mpiexec needed).
"""
import argparse
import os
import re
import signal
from dataclasses import fields

import pytest

from ringtrain.__main__ import main
from ringtrain.cli import build_parser
from ringtrain.fault.errors import UsageError
from ringtrain.fault.signals import PreemptionSignals
from ringtrain.train import TrainConfig
from ringtrain.train.preflight import check_data, check_model, probe_directory

KINDS = {"nan": float("nan"), "inf": float("inf"), "negative": -1, "zero": 0, "bool": True, "list": [1]}
# (field, kind) pairs that are valid values, not bad input: 0 means "off" or "none" for these.
ACCEPTED = {(name, "zero") for name in ("warmup", "momentum", "weight_decay", "grad_clip", "min_lr_ratio", "seed",
                                        "eval_every", "sample_tokens", "stop_after", "checkpoint_every", "epochs", "zero",
                                        "loader_workers")}
ACCEPTED |= {(f.name, "bool") for f in fields(TrainConfig) if f.type is bool}  # on/off options are bools
CASES = [(f.name, kind) for f in fields(TrainConfig) for kind in KINDS]


def flag(name):
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_field_refuses_every_bad_kind_by_name(name, kind):
    value = KINDS[kind]
    if (name, kind) in ACCEPTED:
        assert getattr(TrainConfig(**{name: value}), name) == value
        return
    with pytest.raises(UsageError) as refused:
        TrainConfig(**{name: value})
    said = str(refused.value)
    assert said.startswith(f"{name} ({flag(name)}) = {value!r}: not allowed — "), said


def test_every_accepted_value_names_a_field_and_a_kind():
    # A renamed field or kind would leave its exception here unused, and the new name untested for it.
    names = {f.name for f in fields(TrainConfig)}
    stale = sorted((name, kind) for name, kind in ACCEPTED if name not in names or kind not in KINDS)
    assert not stale, f"ACCEPTED lists pairs that are no field and kind: {stale}"


def test_relations_and_specs_are_checked_too():
    for kwargs, words in [({"width": 100, "heads": 3}, "width (--width) = 100: not allowed — a multiple of heads (3)"),
                          ({"compression": "int8:stochastic=no"}, "int8: stochastic=no is not allowed"),
                          ({"compression": "topk:k=2.5"}, "topk: k=2.5 is not allowed"),
                          ({"checkpoint_every": "0s"}, "checkpoint_every (--checkpoint-every) = '0s'"),
                          ({"checkpoint_every": "-5"}, "checkpoint_every (--checkpoint-every) = '-5'"),
                          ({"model": "nocolon"}, "model (--model) = 'nocolon': not allowed"),
                          ({"resume": ""}, "resume (--resume) = '': not allowed"),
                          ({"bucket_cap_mb": "fast"}, "bucket_cap_mb (--bucket-cap-mb) = 'fast'")]:
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            TrainConfig(**kwargs)


CLI_CASES = [(f.name, text) for f in fields(TrainConfig) if f.type in (int, float, bool) or f.name == "bucket_cap_mb"
             for kind, text in (("nan", "nan"), ("inf", "inf"), ("negative", "-1"), ("zero", "0"), ("text", "x"))
             if (f.name, kind) not in ACCEPTED]


@pytest.mark.parametrize("name, text", CLI_CASES, ids=[f"{n}={t}" for n, t in CLI_CASES])
def test_bad_flags_exit_2_naming_the_flag_without_a_traceback(name, text, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", flag(name), text, "--out-dir", os.devnull])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err and "Abort" not in err
    last = err.strip().splitlines()[-1]
    # Either argparse (a value of the wrong kind) or the config (a value out of range) names the flag.
    assert last.startswith((f"python -m ringtrain train: error: argument {flag(name)}: ",
                            f"ringtrain: {name} ({flag(name)}) = ")), err


def numeric_flags() -> set:
    """The train command's flags whose parser refuses the text 'x' (numbers, and on/off): CLI_CASES tries them."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = commands.choices["train"]
    found = set()
    for action in train._actions:
        if action.type in (None, str):
            continue
        try:
            action.type("x")
        except (ValueError, argparse.ArgumentTypeError):
            found.add(action.dest)
    return found


def test_the_cli_matrix_covers_every_numeric_flag():
    # CLI_CASES is chosen by the fields' annotations; the parser and the defaults say what is numeric too.
    # All three must agree, or a numeric flag has slipped out of the matrix (say, annotated ``int | None``).
    by_default = {f.name for f in fields(TrainConfig) if type(f.default) in (int, float, bool)}
    assert {name for name, _ in CLI_CASES} == numeric_flags() == by_default


@pytest.mark.parametrize("make, words", [
    (lambda d: str(d / "missing.txt"), "no such file or directory"),
    (lambda d: (d / "empty").mkdir() or str(d / "empty"), "the directory holds no files"),
    (lambda d: (d / "zero.txt").write_text("") or str(d / "zero.txt"), "the file is empty"),
])
def test_data_is_checked_before_any_work(tmp_path, make, words):
    with pytest.raises(UsageError, match=words):
        check_data(make(tmp_path))


@pytest.mark.parametrize("model, words", [
    ("no_such_module:build", "cannot import no_such_module"),
    ("os:no_such_function", "os has no function no_such_function"),
])
def test_the_model_factory_is_checked_before_any_work(model, words):
    with pytest.raises(UsageError, match=words):
        check_model(model)


def test_directories_are_probed_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match=r"--checkpoint-dir .*/afile/ckpt: cannot write there \(Not a directory\)"):
        probe_directory(str(tmp_path / "afile" / "ckpt"), "--checkpoint-dir")
    probe_directory(str(tmp_path / "new" / "ckpt"), "--checkpoint-dir")
    assert os.listdir(tmp_path / "new" / "ckpt") == []  # created, and the probe removed again


def test_a_second_sigint_during_a_checkpoint_waits_for_it():
    signals = PreemptionSignals()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt outside
            finished = True
        assert finished and signals.hurried
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signals.close()


@pytest.mark.parametrize("spec", ["ef+int8", "int8+lz4", "powersgd:rank=4", "topk:ratio=0.1", "auto"])
def test_zero_with_compression_is_refused_naming_both(spec):
    with pytest.raises(UsageError, match=rf"compression \(--compression\) = '{re.escape(spec)}' with --zero 2: not "
                                         "supported yet"):
        TrainConfig(zero=2, compression=spec)


@pytest.mark.parametrize("spec", ["fp16", "int8", "ef+topk:ratio=0.01", "auto"])
def test_zero3_refuses_compression_and_names_the_reduce_dtype(spec):
    with pytest.raises(UsageError, match=rf"'{re.escape(spec)}' with --zero 3: not supported yet — ZeRO-3's gradients "
                                         r"are reduce-scattered by FSDP2, which takes no compressor; --reduce-dtype"):
        TrainConfig(zero=3, compression=spec)


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_mixed_precision_outside_zero3_is_refused(zero):
    with pytest.raises(UsageError, match=rf"--param-dtype bf16 --reduce-dtype fp32 with --zero {zero}: mixed precision "
                                         "is ZeRO-3's"):
        TrainConfig(zero=zero, param_dtype="bf16")
    assert TrainConfig(zero=3, param_dtype="bf16", reduce_dtype="fp16").reduce_dtype == "fp16"


def test_zero_stage_and_dtypes_outside_their_range_are_refused():
    with pytest.raises(UsageError, match=r"zero \(--zero\) = 4: not allowed"):
        TrainConfig(zero=4)
    with pytest.raises(UsageError, match=r"param_dtype \(--param-dtype\) = 'fp64': not allowed — one of fp32, bf16, fp16"):
        TrainConfig(zero=3, param_dtype="fp64")


@pytest.mark.parametrize("fields, message", [
    ({"micro_batches": 2}, r"--micro-batches without --pipeline-stages: they shape a pipeline"),
    ({"stage_layers": "2,2"}, r"--stage-layers without --pipeline-stages"),
    ({"pipeline_stages": 2, "micro_batches": 3}, r"--micro-batches must divide --batch-size 8"),
    ({"pipeline_stages": 2, "schedule": "interleaved"}, r"interleaved runs several stages per rank"),
    ({"pipeline_stages": 2, "stages_per_rank": 2}, r"interleaved runs several stages per rank"),
    ({"pipeline_stages": 2, "zero": 3}, r"with --zero 3 --compression none --optimizer adamw: not supported yet"),
    ({"pipeline_stages": 2, "compression": "fp16"}, r"--compression fp16 .*: not supported yet"),
    ({"schedule": "gpipe"}, r"--schedule without --pipeline-stages"),
    ({"schedule": "zigzag"}, r"schedule \(--schedule\) = 'zigzag': not allowed — one of gpipe, 1f1b, interleaved"),
    ({"stage_layers": "3;1"}, r"stage_layers \(--stage-layers\) = '3;1': not allowed — blocks per stage"),
])
def test_pipeline_options_that_cannot_work_together_are_refused(fields, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(**fields)


def test_a_pipeline_that_fits_is_accepted():
    cfg = TrainConfig(pipeline_stages=2, micro_batches=4, schedule="interleaved", stages_per_rank=2,
                      stage_layers="1,1,1,1")
    assert (cfg.pipeline_stages, cfg.micro_batches, cfg.stages_per_rank) == (2, 4, 2)


@pytest.mark.parametrize("extra", [{"zero": 1}, {"zero": 3}, {"compression": "fp16"}])
def test_onebit_adam_refuses_what_it_cannot_honour(extra):
    with pytest.raises(UsageError, match=r"optimizer \(--optimizer\) = 'onebit-adam' with .* not supported — 1-bit "
                                         "Adam compresses its own momentum"):
        TrainConfig(optimizer="onebit-adam", **extra)


def test_dgc_takes_the_optimizers_momentum_and_stands_alone():
    with pytest.raises(UsageError, match=r"dgc's momentum correction takes the optimizer's momentum — use --optimizer "
                                         "sgd --momentum 0"):
        TrainConfig(compression="dgc:ratio=0.01,momentum=0.9", optimizer="sgd", momentum=0.9)
    TrainConfig(compression="dgc:ratio=0.01,momentum=0.9", optimizer="sgd", momentum=0.0)
    TrainConfig(compression="dgc:ratio=0.01,warmup=100,clip=1")  # AdamW: accumulation, clipping, warm-up
    # Under AdamW, DGC's momentum is Adam's beta1 (its variance frozen); another momentum is refused.
    assert TrainConfig(compression="dgc:ratio=0.01,momentum=0.9,masking=0").dgc_adam
    assert not TrainConfig(compression="dgc:ratio=0.01").dgc_adam
    with pytest.raises(UsageError, match=r"under AdamW give dgc momentum=0.9 \(Adam's beta1"):
        TrainConfig(compression="dgc:ratio=0.01,momentum=0.5")
    with pytest.raises(UsageError, match="masking=2 is not allowed"):
        TrainConfig(compression="dgc:ratio=0.01,masking=2")
    for spec in ("ef+dgc:ratio=0.01", "dgc:ratio=0.01+lz4"):
        with pytest.raises(UsageError, match="dgc has its own error feedback and wire format; use it alone"):
            TrainConfig(compression=spec)


@pytest.mark.parametrize("fields, message", [
    ({"elastic": True, "zero": 3}, r"--elastic with --zero 3 --pipeline-stages 1: not supported yet — a dead "
                                   r"rank's shard"),
    ({"shard_recovery": "checkpoint", "zero": 1}, r"--shard-recovery checkpoint without --elastic --zero 1 or 2"),
    ({"shard_recovery": "checkpoint", "elastic": True}, r"--shard-recovery checkpoint without --elastic --zero 1"),
    ({"shard_recovery": "checkpoint", "elastic": True, "zero": 2}, r"--shard-recovery checkpoint without "
                                                                  r"--checkpoint-dir: the survivors go back"),
    ({"shard_recovery": "buddy"}, r"shard_recovery.*'buddy'.*copy, checkpoint"),
    ({"elastic": True, "pipeline_stages": 2}, r"--elastic with --zero 0 --pipeline-stages 2: not supported yet"),
    ({"min_ranks": 2}, r"--min-ranks 2 without --elastic: it is the floor an elastic job shrinks to"),
    ({"elastic": True, "optimizer": "onebit-adam"}, r"--elastic with --optimizer onebit-adam: not supported — its "
                                                    r"optimizer step averages over the ranks after the step is"),
    ({"elastic": True, "compression": "dgc:ratio=0.01,momentum=0.9,masking=0"},
     r"--elastic with --compression dgc under AdamW: not supported"),
])
def test_elastic_options_that_cannot_work_are_refused(fields, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(**fields)


def test_elastic_under_an_mpi_that_cannot_shrink_is_one_line_and_exit_2(tmp_path, capsys):
    # This environment's MPI is MPICH (tests/openmpi/ runs the elastic jobs under Open MPI).
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--elastic", "--steps", "1", "--out-dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--elastic: this MPI (MPICH" in err and "cannot survive a rank's death" in err
    assert "Traceback" not in err

