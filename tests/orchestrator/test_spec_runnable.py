"""A spec that validates can run: every cell has at least one global batch of tokens, every number
is finite, the data source exists, holds the validation tokens asked for and fits the model's
vocabulary. Each failure is one line naming the file and the YAML field."""

import math
import re

import pytest
from pydantic import ValidationError

from orchestrator.cells import expand
from orchestrator.cli import main
from orchestrator.spec import SpecError, parse_spec
from workers.config import CellConfig, DataConfig, TrainConfig, preset
from workers.prepare import prepare_shards

BASE = """
name: demo
models: [tiny]
tokens: [10000]
formats: [dense]
train: {batch_size: 4}
"""


def check(text: str) -> None:
    expand(parse_spec(text, source="demo.yaml"), source="demo.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE.replace("[10000]", "[1000]"),
            "tokens[0]: 1000 tokens are less than one global batch",
        ),
        (
            BASE + "tokens_per_param: [0.001]\n",
            "tokens_per_param[0]: 54 tokens are less than one global batch",
        ),
        (
            BASE + "extra_cells: [{model: tiny, format: int4, tokens: 500}]\n",
            "extra_cells[0].tokens: 500 tokens are less than one global batch",
        ),
        (
            BASE.replace("models: [tiny]", "models: [{preset: tiny, train: {batch_size: 64}}]"),
            "tokens[0]: 10000 tokens are less than one global batch of models[0] "
            "(batch_size 64 x seq_len 256 = 16384 tokens)",
        ),
    ],
)
def test_a_cell_with_less_than_one_global_batch_is_refused(text, message):
    with pytest.raises(SpecError, match=r"^demo\.yaml: " + re.escape(message)):
        check(text)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (BASE.replace("{batch_size: 4}", "{batch_size: 4, lr: .inf}"), "train.lr"),
        (BASE.replace("{batch_size: 4}", "{batch_size: 4, lr: .nan}"), "train.lr"),
        (BASE.replace("{batch_size: 4}", "{batch_size: 4, grad_clip: .inf}"), "train.grad_clip"),
        (BASE + "tokens_per_param: [.inf]\n", "tokens_per_param[0]"),
        (
            BASE.replace("[tiny]", "[{preset: tiny, train: {weight_decay: .inf}}]"),
            "models[0].train.weight_decay",
        ),
        (BASE + "resources: {cpus: .nan}\n", "resources.cpus"),
        (
            BASE + "extra_cells: [{model: tiny, format: int4, tokens_per_param: .inf}]\n",
            "extra_cells[0].tokens_per_param",
        ),
    ],
)
def test_non_finite_numbers_are_refused(text, field):
    with pytest.raises(SpecError, match=rf"^demo\.yaml: {re.escape(field)}: .*finite"):
        check(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda: TrainConfig(lr=math.inf),
        lambda: TrainConfig(weight_decay=math.nan),
        lambda: DataConfig(val_fraction=math.nan),
        lambda: CellConfig(model=preset("tiny"), format="dense", tokens=1000, train={"lr": "inf"}),
    ],
)
def test_configs_refuse_non_finite_numbers_however_built(build):
    with pytest.raises(ValidationError, match="finite"):
        build()


def test_a_local_data_source_that_does_not_exist_is_refused(tmp_path):
    missing = tmp_path / "no-shards"
    with pytest.raises(SpecError, match=rf"^demo\.yaml: data\.source '{missing}': no such folder"):
        check(BASE + f"data: {{source: {missing}}}\n")


def test_a_shard_folder_without_meta_json_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"^demo\.yaml: data\.source '.*': no meta\.json"):
        check(BASE + f"data: {{source: {tmp_path}}}\n")


def test_a_remote_data_source_is_not_looked_up():
    check(BASE + "data: {source: 's3://bucket-that-need-not-exist/shards'}\n")


@pytest.mark.parametrize(
    ("where", "text", "field"),
    [
        (
            "sweep",
            BASE.replace("{batch_size: 4}", "{batch_size: 4, eval_tokens: 10000000}"),
            "train",
        ),
        (
            "model",
            BASE.replace("[tiny]", "[{preset: tiny, train: {eval_tokens: 10000000}}]"),
            "models[0].train",
        ),
        (
            "extra cell",
            BASE + "extra_cells: [{model: tiny, format: int4, tokens: 4096, "
            "train: {eval_tokens: 10000000}}]\n",
            "extra_cells[0].train",
        ),
    ],
)
def test_eval_tokens_beyond_the_bundled_validation_split_name_the_field_that_set_them(
    where, text, field
):
    message = rf"^demo\.yaml: {re.escape(field)}\.eval_tokens: 10000000 needs 9999873 validation"
    with pytest.raises(SpecError, match=message):
        check(text)


def test_eval_tokens_are_checked_against_a_shard_folder_validation_split(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello world " * 2000)  # 24,000 bytes
    meta = prepare_shards(tmp_path / "text", tmp_path / "shards", val_fraction=0.1)
    assert meta["tokens"] == 24000
    spec = BASE + f"data: {{source: {tmp_path / 'shards'}}}\n"
    check(spec.replace("{batch_size: 4}", "{batch_size: 4, eval_tokens: 2048}"))  # 2,400 held out
    with pytest.raises(SpecError, match=r"train\.eval_tokens: 4096 .* has 2400"):
        check(spec.replace("{batch_size: 4}", "{batch_size: 4, eval_tokens: 4096}"))


def test_the_bundled_english_text_is_a_source_and_a_misspelt_bundled_name_is_not():
    check(BASE + "data: {source: bundled-kjv}\n")
    message = r"^demo\.yaml: data\.source 'bundled-kvj': no such bundled corpus"
    with pytest.raises(SpecError, match=message):
        check(BASE + "data: {source: bundled-kvj}\n")


def test_a_vocabulary_smaller_than_the_data_is_refused():
    text = BASE.replace("[tiny]", "[tiny, {preset: tiny, vocab_size: 100}]")
    with pytest.raises(SpecError, match=r"^demo\.yaml: models\[1\]\.vocab_size: 100 .* 256"):
        check(text)


def test_validate_prints_the_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("{batch_size: 4}", "{batch_size: 4, lr: .inf}"))
    assert main(["validate", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"compscale validate: error: {path}: train.lr: ")
    assert "\n" not in error
