"""HTML cleaning, HTML to text, text to HTML."""

from __future__ import annotations

import time

from qaflow_mail.mail.sanitize import (
    MAX_HTML_CHARS,
    escape_text_to_html,
    html_to_text,
    sanitize_html,
    strip_quoted_html,
)

HOSTILE = """<html><head><style>body{display:none}</style><title>t</title></head><body>
<p onclick="evil()" style="color:red">Hello <b>forum</b> <a href="javascript:alert(1)">js</a>
<a href="https://example.com/docs" target="_blank" onmouseover="x()">docs</a>
<a href="data:text/html;base64,PHNjcmlwdD4=">data</a></p>
<img src="https://tracker.example.com/p.gif" onerror="alert(1)"><img src="cid:logo@example.com" onerror="x()">
<img src="data:image/png;base64,AAAA"><iframe src="https://evil.example.com">framed text</iframe>
<script>alert('inline script text')</script><svg><script>alert(3)</script></svg>
<form action="https://evil.example.com"><input name="password"></form><div>Line one</div><div>Line two</div>
</body></html>"""


def test_dangerous_markup_and_its_content_are_removed() -> None:
    clean = sanitize_html(HOSTILE)
    for forbidden in (
        "script",
        "alert",
        "style",
        "display:none",
        "onclick",
        "onerror",
        "onmouseover",
        "javascript:",
        "data:",
        "iframe",
        "framed text",
        "tracker.example.com",
        "<input",
        "<form",
        "<title",
    ):
        assert forbidden not in clean
    assert "Hello <b>forum</b>" in clean


def test_links_keep_their_href_and_get_nofollow_noopener() -> None:
    clean = sanitize_html(HOSTILE)
    assert '<a href="https://example.com/docs" rel="nofollow noopener">docs</a>' in clean
    assert "target=" not in clean


def test_only_inline_cid_images_survive() -> None:
    clean = sanitize_html(HOSTILE)
    assert '<img src="cid:logo@example.com" alt="">' in clean
    assert clean.count("<img") == 1


def test_div_lines_stay_separate_once_divs_are_gone() -> None:
    clean = sanitize_html(HOSTILE)
    assert "<div" not in clean
    assert "Line one<br>Line two" in clean


def test_html_to_text_is_readable_and_quotes_become_prefixed_lines() -> None:
    text = html_to_text("<p>Answer <b>here</b>.</p><blockquote>old <i>quoted</i> text</blockquote><hr><p>tail</p>")
    assert text.splitlines()[0] == "Answer here."
    assert "> old quoted text" in text
    assert "---" in text
    assert "script" not in html_to_text(HOSTILE) and "alert" not in html_to_text(HOSTILE)


def test_mailto_links_read_as_plain_addresses() -> None:
    assert html_to_text('<p>Bob &lt;<a href="mailto:bob@example.org">bob@example.org</a>&gt; wrote:</p>') == (
        "Bob <bob@example.org> wrote:"
    )


def test_strip_quoted_html_drops_client_quote_containers() -> None:
    html = (
        '<div>Mine</div><div class="gmail_quote">On Mon Bob wrote:<blockquote>theirs</blockquote></div>'
        '<blockquote type="cite">apple quote</blockquote><div id="divRplyFwdMsg">From: x</div><p>outlook rest</p>'
    )
    stripped = strip_quoted_html(html)
    assert "Mine" in stripped
    for gone in ("theirs", "apple quote", "From: x", "outlook rest"):
        assert gone not in stripped


def test_escape_text_to_html_makes_safe_paragraphs_with_links() -> None:
    html = escape_text_to_html("Hi <b>you</b> & me\nsecond line\n\nSee https://example.org/a?b=1&c=2")
    assert html.startswith("<p>Hi &lt;b&gt;you&lt;/b&gt; &amp; me<br>\nsecond line</p>")
    assert '<a href="https://example.org/a?b=1&amp;c=2" rel="nofollow noopener">' in html


def test_input_is_bounded() -> None:
    huge = "<p>" + "x" * (MAX_HTML_CHARS * 2) + "</p>"
    started = time.perf_counter()
    clean = sanitize_html(huge)
    assert len(clean) <= MAX_HTML_CHARS + 100
    assert time.perf_counter() - started < 20
