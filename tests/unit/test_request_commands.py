"""-request@ commands and the mode a -join@ mail names."""

from __future__ import annotations

from qaflow_mail.mail.request_commands import Verb, join_mode, parse_commands, parse_line


def test_several_commands_stop_at_the_first_line_that_is_not_one() -> None:
    commands = parse_commands("status", "join daily\nnotify off\n\nThanks a lot!\nleave\n")
    assert [(c.verb, c.argument) for c in commands] == [
        (Verb.STATUS, None), (Verb.JOIN, "daily"), (Verb.NOTIFY, "off")]


def test_a_signature_or_a_quote_ends_the_commands() -> None:
    assert [c.verb for c in parse_commands("", "mode weekly\n-- \nhelp\n")] == [Verb.MODE]
    assert [c.verb for c in parse_commands("", "help\n> leave\n")] == [Verb.HELP]


def test_bad_arguments_are_reported_and_free_text_is_not_a_command() -> None:
    [command] = parse_commands("", "mode hourly")
    assert command.error and command.verb is Verb.MODE
    assert parse_line("help me with my printer") is None
    assert parse_commands("Re: a question about Python", "") == ()
    assert [c.verb for c in parse_commands("Re: Subscribe", "subscribe")] == [Verb.JOIN]  # one command, not two


def test_join_mode_from_subject_or_first_line() -> None:
    assert join_mode("daily", "") == "daily"
    assert join_mode("Re: join weekly", "") == "weekly"
    assert join_mode("", "\nsubscribe daily\n") == "daily"
    assert join_mode("Please add me", "Hello!") is None


def test_every_way_a_reply_may_say_leave_is_a_leave_command_here_too() -> None:
    from qaflow_mail.mail.commands import ReplyCommand, reply_command

    for line in ("unsubscribe", "Unsubscribe me, please", "stop", "remove me from this list", "Abmelden!",
                 "darme de baja"):
        assert reply_command(line) is ReplyCommand.UNSUBSCRIBE
        [command] = parse_commands("", line)
        assert (command.verb, command.argument, command.error) == (Verb.LEAVE, None, ""), line
    assert [c.verb for c in parse_commands("Re: unsubscribe", "status\n")] == [Verb.LEAVE, Verb.STATUS]
    assert parse_line("stop the daemon") is None and parse_line("leave") == parse_commands("", "leave")[0]
