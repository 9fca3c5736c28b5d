"""The gate's and the audit's check tables as Markdown (Prefect artifacts) and as text (the CLI)."""

from __future__ import annotations

import json


def bound_text(low: float | None, high: float | None, *, ascii_only: bool = False) -> str:
    ge, le = (">=", "<=") if ascii_only else ("≥", "≤")
    return " ".join(
        p for p in (f"{ge} {low}" if low is not None else "", f"{le} {high}" if high is not None else "") if p
    )


def checks_table(checks) -> str:
    """A Markdown table of gate checks (GateCheck values or their dicts)."""
    rows = []
    for check in checks:
        c = check if isinstance(check, dict) else check.__dict__
        value = "—" if c["value"] is None else f"{c['value']:.4f}"
        rows.append(
            f"| {c['metric']} | {value} | {bound_text(c['min'], c['max'])} | {'pass' if c['passed'] else '**FAIL**'} |"
        )
    return "| metric | value | bound | verdict |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def gate_markdown(request_id: str, outcome, version: int | None) -> str:
    """The gate of one request (a Prefect artifact of every request run)."""
    verdict = "passed" if outcome.gate_passed else "FAILED: " + "; ".join(outcome.gate_reasons)
    return (
        f"# Request {request_id}\n\nCandidate version: {version}\n\nGate: {verdict}\n\n"
        f"{checks_table(outcome.gate_checks)}\n"
        f"Report: `{outcome.report_html}`\n\nErased so far: {json.dumps(list(outcome.erased))}\n"
    )


def audit_markdown(result: dict) -> str:
    """The checks of one erosion audit (a Prefect artifact of every audit run)."""
    verdict = "passed" if result["passed"] else "FAILED: " + "; ".join(result["reasons"])
    return (
        f"# Erosion audit of {result['model_name']} version {result['version']}\n\n"
        f"Erased: {json.dumps(result['erased'])}\n\nAudit: {verdict}\n\n{checks_table(result['checks'])}\n"
        f"Report: `{result['report_html']}`\n"
    )
