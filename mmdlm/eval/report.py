"""Render an `EvalReport` (or a table of them) for a terminal with rich; the JSON stays the source of truth."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mmdlm.eval.results import EvalProtocol, EvalReport, GenerativeResult


def protocol_line(p: EvalProtocol) -> str:
    parts = [
        f"family={p.family}",
        f"split={p.split}" if p.split else "",
        f"context={p.context_length}" if p.context_length else "",
        f"tokens_seen={p.tokens_seen}" if p.tokens_seen is not None else "",
        f"estimator={p.estimator}" if p.estimator else "",
        f"K={p.num_time_samples}" if p.num_time_samples else "",
        f"steps={p.sampling_steps}" if p.sampling_steps else "",
        f"sampler={p.sampler_precision}" if p.sampler_precision else "",
        f"reference={p.reference_model}" if p.reference_model else "",
        f"n={p.num_samples}" if p.num_samples else "",
        f"seed={p.seed}" if p.seed is not None else "",
        f"precision={p.precision}" if p.precision else "",
    ]
    return " ".join(x for x in parts if x)


def _gen_row(name: str, g: GenerativeResult) -> list[str]:
    return [
        name,
        f"{g.gen_ppl:.2f}",
        f"{g.unigram_entropy:.3f}",
        f"{g.distinct_2:.3f}",
        f"{g.repetition_4:.3f}",
        str(g.network_calls) if g.network_calls is not None else "-",
        f"{g.sampling_s:.2f}" if g.sampling_s is not None else "-",
    ]


def render_report(report: EvalReport, console: Console | None = None) -> None:
    console = console or Console()
    if report.nll is not None:
        n = report.nll
        kind = "exact NLL" if n.protocol.estimator == "exact" else "NLL upper bound (negative ELBO)"
        table = Table(title=f"Validation {kind}")
        for col in ("nats/token", "bits/token", "PPL", "tokens", "sequences"):
            table.add_column(col, justify="right")
        table.add_row(
            f"{n.nll:.4f}", f"{n.bits_per_token:.4f}", f"{n.ppl:.2f}", str(n.tokens), str(n.sequences)
        )
        console.print(table)
        console.print(f"[dim]{protocol_line(n.protocol)}[/dim]")
    rows: list[list[str]] = []
    if report.generative is not None:
        rows.append(_gen_row("samples", report.generative))
    if report.data_reference is not None:
        rows.append(_gen_row("real rows", report.data_reference))
    if report.sweep is not None:
        rows.extend(_gen_row(f"steps={r.protocol.sampling_steps}", r) for r in report.sweep.rows)
    if rows:
        table = Table(title="Generative PPL (always read with the entropy)")
        for col in ("", "gen PPL", "entropy", "distinct-2", "rep-4", "net calls", "seconds"):
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        g = report.generative or report.data_reference
        assert g is not None
        console.print(f"[dim]{protocol_line(g.protocol)}[/dim]")
        for example in g.examples[:2]:
            console.print(f"[italic]{example[:300]!r}[/italic]")
    if report.latent:
        from mmdlm.eval.latent import summarize

        for name, result in report.latent.items():
            console.print(f"[bold]latent {name}[/bold]: {summarize(result)}")
    notes = {note for r in (report.nll, report.generative) if r is not None for note in r.protocol.notes}
    for note in sorted(notes):
        console.print(f"[yellow]note:[/yellow] {note}")
