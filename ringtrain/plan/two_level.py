"""The two-level model's predictions of measured two-level runs (several ranks per host).

The fit never sees two-level results (fit.py): they are what the model must
predict from the single-level link sweep and the shared-memory sweep. Each
case pairs a measured time with the model's: an allreduce row from 1 MiB (the
node-aware ring, the flat ring and MPI_Allreduce), or a training row of
``bench convergence`` (step time, node-aware or flat as the row ran).
"""
from .costmodel import blend
from .fit import step_cases, world_of

MIN_BYTES = 1 << 20
_ALGORITHMS = {"hierarchical": "hierarchical", "ring": "ring", "MPI_Allreduce": "mpi"}


def two_level_cases(model, data: dict, rate: float) -> list[dict]:
    """``{"what", "predicted_s", "measured_s", "error"}`` for each row of a two-level result the model covers."""
    k = int(data["meta"].get("ranks_per_host", 1))
    if k < 2:
        return []
    n, cases = world_of(data) // k, []
    if data.get("benchmark") == "allreduce":
        for row in data["rows"]:
            algorithm = _ALGORITHMS.get(row["algorithm"])
            if algorithm and row["size"] >= MIN_BYTES:
                predicted = model.allreduce_time(row["size"], n, rate, algorithm, k)
                cases.append(_case(f"allreduce {row['algorithm']} {row['size'] >> 20} MiB", predicted,
                                   row["time_us"] * 1e-6))
    elif data.get("benchmark") == "convergence":
        for row, key, _, serial, ideal in step_cases(model, data, rate):
            how = "node-aware" if row.get("node_aware", "auto") != "off" else "flat"
            cases.append(_case(f"training {key} {row['bucket_cap_mb']:g} MB {how}",
                               blend(serial, ideal, model.overlap), row["step_ms"] / 1e3))
    return cases


def _case(what: str, predicted: float, measured: float) -> dict:
    return {"what": what, "predicted_s": predicted, "measured_s": measured, "error": predicted / measured - 1}
