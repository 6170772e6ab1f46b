"""Mail targets (kinds "smtp" and "ses"): validated sends, held in an outbox, sent exactly once."""

from __future__ import annotations

from safe_mcp_email.adapter import MailAdapter, SesAdapter, SmtpAdapter
from safe_mcp_email.settings import MailSettings, SesSettings, SmtpSettings

__all__ = ["MailAdapter", "MailSettings", "SesAdapter", "SesSettings", "SmtpAdapter", "SmtpSettings"]
