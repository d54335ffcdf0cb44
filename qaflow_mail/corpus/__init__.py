"""Tools that read the real-world corpora in ../shared/corpora: threading measured against notmuch,
bounce classification, and the content layer (decoding, quote trimming) against the answer keys."""
