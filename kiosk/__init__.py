"""Call endpoint for Raspberry Pi kiosks and appliances."""

__version__ = "0.1.0"
