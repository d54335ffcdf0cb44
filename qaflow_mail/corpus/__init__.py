"""Tools that read the real-world corpora in ../shared/corpora: threading measured against notmuch."""
