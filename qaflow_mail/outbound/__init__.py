"""Outbound mail: rendering, notifications, digests, announcements and the outbox."""
