"""Trimming a run's logs back to its checkpoint before it resumes (TensorBoard events and CSV rows)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from agents.files import atomic_write


def truncate_logs(folder: Path, step: int) -> int:
    """Drop TensorBoard events and CSV rows logged after ``step`` (a killed run logged past its checkpoint).

    Each event file is rewritten through a temporary file, so a resumed run neither repeats nor misses a step.
    Returns the number of events dropped.
    """
    import csv

    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    dropped = 0
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        events = []
        for raw in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(raw)
            if event.HasField("file_version"):
                continue
            if event.step > step:
                dropped += 1
                continue
            events.append(event)
        tmp_dir = Path(tempfile.mkdtemp(dir=folder, prefix=".truncate-"))
        writer = EventFileWriter(str(tmp_dir))
        for event in events:
            writer.add_event(event)
        writer.close()
        (new_file,) = tmp_dir.glob("events.out.tfevents.*")
        os.replace(new_file, path)
        tmp_dir.rmdir()
    for path in sorted(Path(folder).glob("progress*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "time/total_timesteps" not in rows[0]:
            continue
        col = rows[0].index("time/total_timesteps")
        kept = [rows[0]] + [r for r in rows[1:] if r[col] == "" or float(r[col]) <= step]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(kept)
        atomic_write(path, buffer.getvalue().encode())
    return dropped
