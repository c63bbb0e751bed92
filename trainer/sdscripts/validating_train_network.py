"""sd-scripts' anima_train_network.py with its validation fixed; run by sd-scripts' own Python, not imported.

`python validating_train_network.py CHECKOUT ARGS...` does what `python CHECKOUT/anima_train_network.py
ARGS...` does (its `__main__` block at 48d368fa), with one change. AnimaNetworkTrainer.process_batch
takes the caption-dropout rates off the end of `batch["text_encoder_outputs_list"]` and writes the
shortened list back into the batch. train_network.py's validation passes the same batch once per
validation timestep (4), so the second call reads the text encoder's attention mask as the dropout
rates and dies: `TypeError: drop_cached_text_encoder_outputs() missing 1 required positional argument:
't5_attn_mask'`. Training passes each batch once, so passing a shallow copy of the batch changes
nothing there and lets validation see the batch it was given every time.

This file imports nothing of anima_lora_flow: sd-scripts' virtual environment does not have it.
"""

import importlib
import sys


def main() -> None:
    checkout = sys.argv.pop(1)
    # sys.path[0] is this file's folder, whose module names (launch, install, ...) must not shadow sd-scripts' imports.
    sys.path[0] = checkout
    sd = importlib.import_module("anima_train_network")
    train_util = importlib.import_module("library.train_util")
    process_batch = sd.AnimaNetworkTrainer.process_batch

    def process_a_copy(self, batch, *args, **kwargs):
        return process_batch(self, dict(batch), *args, **kwargs)

    sd.AnimaNetworkTrainer.process_batch = process_a_copy
    parser = sd.setup_parser()
    args = parser.parse_args()
    train_util.verify_command_line_training_args(args)
    args = train_util.read_config_from_file(args, parser)
    if args.attn_mode == "sdpa":
        args.attn_mode = "torch"  # backward compatibility, as sd-scripts' own __main__ does
    sd.AnimaNetworkTrainer().train(args)


if __name__ == "__main__":
    main()
