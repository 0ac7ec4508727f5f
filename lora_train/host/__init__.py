"""The host adapter: the only product code that touches ComfyUI (`comfy.*`, `folder_paths`, `server`). `bootstrap`
finds and imports a ComfyUI install for the command line; `comfy_adapter` lends ComfyUI's model, device, memory,
Cancel and progress to the training loop. Imported only where a ComfyUI is present (by the nodes, or by the CLI
after bootstrap)."""
