"""tuneforge: declarative, data-config driven supervised fine-tuning."""

__version__ = "0.1.0"
