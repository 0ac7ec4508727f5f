"""CLI sub-commands: each module here defines `register(subparsers)`; `lora_train.cli` finds them all."""
