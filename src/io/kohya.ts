/**
 * kohya / sd-scripts LoRA keys: lora_unet_…, lora_te_… with .lora_down.weight [r, in], .lora_up.weight [out, r], a 0-d .alpha,
 * and LyCORIS's DoRA `.dora_scale` ([out, 1] or [1, in]: lycoris/modules/locon.py, LoConModule.custom_state_dict).
 */
export const KOHYA = /^(lora_(?:unet|te\d?)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha|dora_scale)$/;
