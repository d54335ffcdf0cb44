"""Tools that read the real-world corpora in ../shared/corpora: threading measured against notmuch,
bounce classification, and the content layer (decoding, quote trimming) against the answer keys.

Evaluation code: the check-corpus and parse commands, bench/ and the tests use it; the serving path
(server, pipeline, outbound, services) never imports it."""
