"""One file per architecture; each holds one public mixer module and its State."""
