"""Record world-model clips from a real game engine: ViZDoom (Doom, with the
Freedoom WADs that `pip install vizdoom` ships; headless, no display).

Each clip is T frames of one episode, RGB, resized to H x W (box filter)
and scaled to [-1, 1], with the discrete action that led to each frame
(orrery's convention: action_ids[f] moved frame f - 1 to frame f; frame 0
gets 0, "no-op"). The policy is random with sticky actions: an action is
held for 1 to `--hold` steps, each step `--skip` game tics. Clips are
written as `.npy` pairs for `orrery data import`:

    python3 datasets/vizdoom_record.py --out clips/doom --clips 600 --frames 16
    orrery data import --from clips/doom --out data/doom

Scenarios (`--scenario`, from ViZDoom's scenarios folder) and their actions:
  basic              0 no-op, 1 move left, 2 move right, 3 attack: one room,
                     a monster that moves and dies when shot, the view shifts
                     as the player strafes
  defend_the_center  0 no-op, 1 turn left, 2 turn right, 3 attack: monsters
                     walk in from all sides of a round room
  health_gathering   0 no-op, 1 turn left, 2 turn right, 3 forward: a floor of
                     acid with medkits
Every clip of a run has the same scenario, size and length. The same seed
records the same clips.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

SCENARIOS = {
    # scenario: the buttons of actions 1..3 (0 is "press nothing").
    "basic": ["MOVE_LEFT", "MOVE_RIGHT", "ATTACK"],
    "defend_the_center": ["TURN_LEFT", "TURN_RIGHT", "ATTACK"],
    "health_gathering": ["TURN_LEFT", "TURN_RIGHT", "MOVE_FORWARD"],
}


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the .npy clips (created)")
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--frames", type=int, default=16, help="frames per clip, T")
    p.add_argument("--size", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="basic")
    p.add_argument("--skip", type=int, default=4, help="game tics per recorded frame")
    p.add_argument("--hold", type=int, default=6, help="most steps an action is held")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.clips < 1 or a.frames < 2 or min(a.size) < 4 or a.skip < 1 or a.hold < 1:
        p.error("--clips >= 1, --frames >= 2, --size >= 4 4, --skip >= 1 and --hold >= 1")
    return a


def game(scenario, seed, ini):
    try:
        import vizdoom as vzd
    except ImportError:
        sys.exit("vizdoom_record.py needs ViZDoom: pip install vizdoom")
    g = vzd.DoomGame()
    g.load_config(os.path.join(vzd.scenarios_path, f"{scenario}.cfg"))
    # The engine writes its settings file here, not into the working folder.
    g.set_doom_config_path(ini)
    g.set_window_visible(False)
    g.set_sound_enabled(False)
    g.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    g.set_screen_format(vzd.ScreenFormat.RGB24)
    g.set_render_hud(False)
    g.set_mode(vzd.Mode.PLAYER)
    g.set_available_buttons([getattr(vzd.Button, b) for b in SCENARIOS[scenario]])
    g.set_seed(seed)
    g.init()
    return g


def resize(rgb, h, w):
    """[120, 160, 3] uint8 -> [3, h, w] float32 in [-1, 1] (box filter)."""
    from PIL import Image

    small = Image.fromarray(rgb).resize((w, h), Image.BOX)
    return (np.asarray(small, np.float32).transpose(2, 0, 1) / 127.5 - 1.0).astype("<f4")


def main():
    a = parse()
    h, w = a.size
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    scratch = tempfile.mkdtemp(prefix="vizdoom-")
    g = game(a.scenario, a.seed, os.path.join(scratch, "_vizdoom.ini"))
    buttons = len(SCENARIOS[a.scenario])
    press = [[0] * buttons] + [[int(i == b) for i in range(buttons)] for b in range(buttons)]
    written, episodes = 0, 0
    g.new_episode()
    while written < a.clips:
        frames, actions = [], []
        action, left = 0, 0
        while len(frames) < a.frames and not g.is_episode_finished():
            if frames:
                if left == 0:
                    action, left = int(rng.integers(0, len(press))), int(rng.integers(1, a.hold + 1))
                g.make_action(press[action], a.skip)
                left -= 1
                if g.is_episode_finished():
                    break
            frames.append(resize(g.get_state().screen_buffer, h, w))
            actions.append(action if len(frames) > 1 else 0)
        if len(frames) == a.frames:
            name = os.path.join(a.out, f"{a.scenario}-{a.seed}-{written:06d}")
            np.save(name + ".npy", np.stack(frames))
            np.save(name + ".actions.npy", np.asarray(actions, "<i8"))
            written += 1
        else:
            # The episode ended inside the clip: drop it, start another.
            g.new_episode()
            episodes += 1
    g.close()
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({
        "clips": written, "frames": a.frames, "size": [h, w], "scenario": a.scenario,
        "num_actions": len(press), "episodes": episodes + 1, "out": a.out,
    }))


if __name__ == "__main__":
    main()
