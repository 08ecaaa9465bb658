"""Adapter export: gather (ZeRO-3 included), verify, save in PEFT format, publish, pull, merge."""
