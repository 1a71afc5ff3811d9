# The recipe search's table (markdown) from every score_pixels.json that
# score_against_pixels.py wrote under WORK_DIR/runs, the copy-last baseline
# first, the runs in the order they were scored (or as named). With
# --per-frame: PSNR and SSIM for each generated frame instead.
#   python3 recipe_table.py [--per-frame] WORK_DIR [RUN[=LABEL] ...]
import glob, json, os, sys

per_frame = '--per-frame' in sys.argv
sys.argv = [a for a in sys.argv if a != '--per-frame']

rows = []
for p in sorted(glob.glob(f'{sys.argv[1]}/runs/**/score_pixels.json', recursive=True), key=os.path.getmtime):
    rows.append((os.path.relpath(os.path.dirname(p), f'{sys.argv[1]}/runs'), json.load(open(p))))
if len(sys.argv) > 2:  # these runs, in this order, as RUN or RUN=LABEL
    found = dict(rows)
    rows = [(a.partition('=')[2] or a, found[a.partition('=')[0]]) for a in sys.argv[2:]]
if not rows:
    sys.exit('no score_pixels.json under runs/')


if per_frame:
    n = rows[0][1]['frames']
    print('| predictor | score | ' + ' | '.join(str(i + 1) for i in range(n)) + ' |')
    print('|---|---|' + '---|' * n)
    for name, m in [('copy last context', rows[0][1]['copy'])] + [(r, s['model']) for r, s in rows]:
        for score, fmt in (('psnr', '%.1f'), ('ssim', '%.2f')):
            print(f'| {name} | {score.upper()} | ' + ' | '.join(fmt % x for x in m[f'{score}_by_frame']) + ' |')
    sys.exit()


def f(x, fmt):
    return '' if x is None else format(x, fmt)


print('| run | PSNR | first 3 frames | last 3 | SSIM | changed-pixel PSNR | frames beating copy | '
      'held-out loss (EMA) | context gain | action gain (share of next-frame loss) | anchored: PSNR, first frame |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
c = rows[0][1]['copy']
print(f"| copy last context | {c['psnr']:.2f} | {' / '.join('%.1f' % x for x in c['psnr_by_frame'][:3])} | "
      f"{' / '.join('%.1f' % x for x in c['psnr_by_frame'][-3:])} | {c['ssim']:.3f} | {c['changed_psnr']:.2f} | | | | | |")
for name, s in rows:
    m = s['model']
    a = s.get('anchored')
    anchored = f"{a['psnr']:.2f}, {a['psnr_by_frame'][0]:.1f}" if a else ''
    share = s['action_gain'] / s['next_frame_loss'] if s.get('action_gain') is not None else None
    print(f"| {name} | {m['psnr']:.2f} | {' / '.join('%.1f' % x for x in m['psnr_by_frame'][:3])} | "
          f"{' / '.join('%.1f' % x for x in m['psnr_by_frame'][-3:])} | {m['ssim']:.3f} | {m['changed_psnr']:.2f} | "
          f"{m['beats_copy']} of {s['frames']} | {f(s.get('heldout_loss_ema'), '.4f')} | "
          f"{f(s.get('context_gain'), '+.4f')} | {f(s.get('action_gain'), '+.4f')} ({f(share, '.0%')}) | {anchored} |")
