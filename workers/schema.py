"""Row schemas of the store's Parquet files (docs/contracts.md), shared by the worker that writes
them and the orchestrator that reads them; importing this needs pyarrow only, not torch."""

import pyarrow as pa

LOSS_SCHEMA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("attempt", pa.int32()),
        ("step", pa.int64()),
        ("tokens", pa.int64()),
        ("train_loss", pa.float64()),
        ("val_loss", pa.float64()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("wall_time_s", pa.float64()),
    ]
)

RESULT_SCHEMA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("model", pa.string()),
        ("params", pa.int64()),
        ("tokens", pa.int64()),
        ("format", pa.string()),
        ("seed", pa.int64()),
        ("val_loss", pa.float64()),
        ("train_loss", pa.float64()),
        ("steps", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("hardware", pa.string()),
        ("world_size", pa.int64()),
        ("attempt", pa.int64()),
        ("data_fingerprint", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One row per round of an adaptive sweep (`orchestrator.rounds`, the store's `rounds` view).
ROUND_SCHEMA = pa.schema(
    [
        ("sweep", pa.string()),
        ("round", pa.int64()),
        ("question", pa.string()),
        ("cells_added", pa.int64()),
        ("cells", pa.int64()),  # the sweep's cells after this round
        ("flops", pa.float64()),  # FLOPs of those cells (6ND; a ladder's trunk once)
        ("estimate", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
        ("half_width", pa.float64()),  # on the judged (log) scale
        ("level", pa.float64()),  # the interval's level at this look (the stop rule's)
        ("decided", pa.bool_()),
        ("at_bound", pa.float64()),  # share of resamples with a used rho at 1
        ("stopped", pa.string()),  # why the loop stopped after this round; "" if it went on
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)
