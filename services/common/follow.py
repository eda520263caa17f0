"""Terminal rendering of a job's event stream: log lines, state changes and a rich progress bar.
Shared by `mmdlm logs --follow`, `mmdlm submit --follow` and the demo."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from services.common.client import Client, Event


def follow_job(
    client: Client, job_id: str, console: Console, *, follow: bool = True, show_logs: bool = True
) -> dict[str, Any]:
    """Print the job's events until it ends (or, with follow=False, until the stored ones are shown);
    returns the job as the API reports it afterwards."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and not console.record,
    )
    task: TaskID | None = None
    last_phase: str | None = None
    with progress:
        for event in client.events(job_id, follow=follow):
            task, last_phase = _render(event, console, progress, task, last_phase, show_logs)
    return client.job(job_id)


def _render(
    event: Event,
    console: Console,
    progress: Progress,
    task: TaskID | None,
    last_phase: str | None,
    show_logs: bool,
) -> tuple[TaskID | None, str | None]:
    data = event.data
    if event.type == "progress":
        phase = data.get("message") or "working"
        total = data.get("total")
        if task is None or phase != last_phase:
            if task is not None:
                progress.stop_task(task)
            task = progress.add_task(phase, total=total)
            last_phase = phase
            if progress.disable:  # not a terminal: one line per phase instead of a bar
                console.print(f"[dim]{phase}[/dim]")
        progress.update(task, completed=data.get("step") or 0, total=total)
    elif event.type == "log" and show_logs:
        style = "red" if data.get("stream") == "stderr" else None
        # soft_wrap: a log line stays one line (greppable, copyable), never cut at the terminal width
        console.print(data.get("line", ""), style=style, markup=False, highlight=False, soft_wrap=True)
    elif event.type == "state":
        text = f"state: {data.get('status')}"
        if data.get("attempt"):
            text += f" (attempt {data['attempt']})"
        if data.get("message"):
            text += f": {data['message']}"
        if data.get("error"):
            text += f": {data['error']}"
        if data.get("retry_in_s") is not None:
            text += f" (retry in {data['retry_in_s']}s)"
        style = "bold" if data.get("status") != "failed" else "bold red"
        console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
    elif event.type == "artifact":
        console.print(
            f"artifact: {data.get('kind')} {data.get('name')!r} -> {data.get('artifact_id')}",
            markup=False,
            soft_wrap=True,
        )
    return task, last_phase
