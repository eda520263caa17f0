"""index jobs.heartbeat_at: the workers-seen view of GET /v1/system scans it

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

`crud.recent_leases` selects the jobs heartbeated since a time and orders them by heartbeat; without an
index that is a scan of the whole jobs table on every /v1/system call (the dashboard polls it). The jobs
table is small next to metrics and job_events, so a plain (non-concurrent) build inside the upgrade's
transaction is short.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_heartbeat", "jobs", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_heartbeat", table_name="jobs")
