"""The live progress view: plain lines when output is not a terminal, a rich table when it is."""

import io

from orchestrator.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_output_prints_a_line_per_finished_cell_and_a_summary():
    stream = io.StringIO()
    progress = Progress("demo", total=3, stream=stream)
    progress.set("pending", 3)
    progress.move("pending", "running")
    progress.move("running", "done", "done cell-a (0.1 s)")
    progress.add_tokens(1000)
    progress.move("pending", "running")
    progress.move("running", "failed", "failed cell-b: ValueError")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["[demo] done cell-a (0.1 s)", "[demo] failed cell-b: ValueError"]
    assert lines[-1].startswith("[demo] done 1, pending 1, failed 1 of 3; ")
    assert "tokens/s" in lines[-1]


def test_a_terminal_gets_a_live_table_of_counts_and_no_per_cell_lines():
    stream = Terminal()
    progress = Progress("demo", total=2, stream=stream)
    progress.set("pending", 2)
    progress.move("pending", "running", "a note only plain output prints")
    progress.close()
    text = stream.getvalue()
    assert "sweep demo: 2 cells" in text and "tokens/s" in text
    assert "a note only plain output prints" not in text


def test_a_failed_cell_is_named_with_the_first_line_of_its_error():
    stream = io.StringIO()
    progress = Progress("demo", total=1, stream=stream)
    progress.move("pending", "running")
    progress.fail("cell-b", "Diverged", "validation loss is nan at step 40\nTraceback ...")
    progress.close()
    assert stream.getvalue().splitlines()[0] == (
        "[demo] failed cell-b: Diverged: validation loss is nan at step 40"
    )
    live = Terminal()
    progress = Progress("demo", total=1, stream=live)
    progress.move("pending", "running")
    progress.fail("cell-b", "Diverged", "validation loss is nan at step 40\nTraceback ...")
    progress.close()
    text = live.getvalue()
    assert "latest failures" in text and "validation loss is nan at step 40" in text
    assert "Traceback" not in text
