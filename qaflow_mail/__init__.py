"""QAFlow Mail: the email gateway of the QAFlow Q&A forum."""

__version__ = "0.1.0"
