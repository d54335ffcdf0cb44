"""A reply (by its token) whose whole text is "unsubscribe", "stop", "remove me"… is applied, not posted."""

from __future__ import annotations

from qaflow_mail.mail.addresses import Reply
from qaflow_mail.mail.commands import reply_command
from qaflow_mail.pipeline import Context, Outcome, accepted
from qaflow_mail.services.reply_commands import apply_reply_command as apply


async def apply_reply_command(ctx: Context) -> Context | Outcome:
    if not isinstance(ctx.destination, Reply) or ctx.content is None or ctx.parsed.attachments:
        return ctx
    command = reply_command(ctx.content.text)
    if command is None:
        return ctx
    assert ctx.author is not None and ctx.category is not None, "runs after authorize_sender"
    in_reply_to = None if ctx.parsed.message_id_synthesized else ctx.parsed.message_id
    done = await apply(ctx.session, ctx.deps, command=command, user=ctx.author, category=ctx.category,
                       in_reply_to=in_reply_to, now=ctx.now)
    return accepted(reason=done)
