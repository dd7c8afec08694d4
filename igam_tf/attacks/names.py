"""Attack names: the grammar `parse_attack` reads, each attack's default budget, and the
name reports give it. Kept apart from the attacks so that a name is checked (and a report
laid out) without building any of them, and so that adding an attack touches one place.

Attack names, with the IGAM / Madry settings as defaults:
  clean                    the unperturbed images
  fgsm                     one signed step of size eps, no random start
  pgd<k>[_dlr][_l2]        k steps of PGD from a uniform random start; step eps / 4
                           unless given (2/255 at eps 8/255); cross-entropy unless _dlr;
                           L-inf unless _l2
  apgd[<k>]_{ce,dlr}[_l2]  Auto-PGD (Croce & Hein, 2020), k iterations (default 100)
  apgd[<k>]_t              APGD-T: Auto-PGD on the targeted DLR loss, one run per target
                           class (the top 9 or K - 1), k iterations each (default 100)
  fab[<k>]_t               FAB-T, L-inf, the same targets, k iterations each (default 100)
  square[<q>]              Square Attack, L-inf, q queries (default 5000), no gradients
  autoattack               AutoAttack's standard ensemble: APGD-CE, APGD-T, FAB-T, Square
  autoattack_fast          APGD-CE and APGD-T only: not AutoAttack, and reported as
                           "AutoAttack (fast: APGD-CE, APGD-T)"
"""

import dataclasses
import re

ATTACKS = ('clean', 'fgsm', 'pgd5', 'pgd10', 'pgd20', 'pgd50', 'pgd100', 'pgd20_l2',
           'apgd_ce', 'apgd_dlr', 'apgd_t', 'fab_t', 'square', 'autoattack', 'autoattack_fast')
DEFAULT_ATTACKS = ('clean', 'fgsm', 'pgd20', 'apgd_ce', 'apgd_dlr')
APGD_STEPS = 100
# AutoAttack's attacks beyond APGD-CE, and its ensembles: {method: default steps or queries}.
AUTOATTACK_METHODS = {'apgd_t': 100, 'fab_t': 100, 'square': 5000, 'autoattack': 100,
                      'autoattack_fast': 100}
# The ensembles' methods and the versions of AutoAttack they run.
ENSEMBLE_VERSIONS = {'autoattack': 'standard', 'autoattack_fast': 'fast'}
# What reports call an attack written with its default budget; other PGD names read
# 'PGD-<k>[_DLR][_L2]', any other name is shown as written.
_DISPLAY_NAMES = {'clean': 'Clean', 'fgsm': 'FGSM', 'apgd_ce': 'APGD-CE',
                  'apgd_dlr': 'APGD-DLR', 'apgd_t': 'APGD-T', 'fab_t': 'FAB-T',
                  'square': 'Square', 'autoattack': 'AutoAttack',
                  'autoattack_fast': 'AutoAttack (fast: APGD-CE, APGD-T)'}
# Report columns: the paper's first (clean, FGSM, PGD), then the stronger attacks.
_METHOD_ORDER = ('clean', 'fgsm', 'pgd', 'apgd', 'apgd_t', 'fab_t', 'square',
                 'autoattack_fast', 'autoattack')

_NAME_GRAMMAR = re.compile(
    r'^(?:(?P<clean>clean)|(?P<fgsm>fgsm)'
    r'|pgd(?P<pgd_steps>\d+)(?P<pgd_dlr>_dlr)?(?P<pgd_l2>_l2)?'
    r'|apgd(?P<apgd_steps>\d+)?_(?P<apgd_loss>ce|dlr)(?P<apgd_l2>_l2)?'
    r'|(?P<apgd_t>apgd(?P<apgd_t_steps>\d+)?_t)|(?P<fab_t>fab(?P<fab_t_steps>\d+)?_t)'
    r'|(?P<square>square(?P<square_steps>\d+)?)|(?P<autoattack>autoattack(?:_fast)?))$')


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """An attack's settings, as parsed from its name.

  Attributes:
    name: the name it was parsed from, e.g. 'pgd20'.
    method: 'clean', 'fgsm', 'pgd', 'apgd' or one of AUTOATTACK_METHODS.
    norm: 'linf' or 'l2'.
    loss: 'ce' or 'dlr'.
    steps: gradient steps (0 for clean, 1 for fgsm); queries for square.
    random_start: whether it starts from a random point in the eps ball.
  """
  name: str
  method: str
  norm: str = 'linf'
  loss: str = 'ce'
  steps: int = 0
  random_start: bool = False

  def default_step_size(self, eps):
    """The step size used unless one is given: eps / 4 (2/255 at 8/255) for PGD."""
    return eps if self.method == 'fgsm' else eps / 4

  @property
  def display_name(self):
    """What reports call it, e.g. 'PGD-20', 'APGD-CE', 'AutoAttack'."""
    if self.name in _DISPLAY_NAMES:
      return _DISPLAY_NAMES[self.name]
    return self.name.upper().replace('PGD', 'PGD-') if self.method == 'pgd' else self.name

  @property
  def report_order(self):
    """Sorts report columns: L-inf before L2, then the paper's attacks before the
    stronger ones, then by loss and budget."""
    method = _METHOD_ORDER.index(self.method) if self.method in _METHOD_ORDER else 99
    return (self.norm != 'linf', method, self.loss, self.steps, self.name)


def parse_attack(name):
  """Returns the `AttackSpec` for an attack name (grammar in the module docstring)."""
  name = name.strip().lower()
  match = _NAME_GRAMMAR.match(name)
  if not match:
    raise ValueError(f'Unknown attack {name!r}; expected clean, fgsm, pgd<k>[_dlr][_l2], '
                     f'apgd[<k>]_(ce|dlr)[_l2], apgd[<k>]_t, fab[<k>]_t, square[<q>], '
                     f'autoattack or autoattack_fast, e.g. {", ".join(ATTACKS)}')
  counts = [match[group] for group in _NAME_GRAMMAR.groupindex if group.endswith('_steps')]
  if any(count is not None and int(count) < 1 for count in counts):
    raise ValueError(f'Attack {name!r} takes no step at all: give it at least one '
                     f'(e.g. pgd20, square1000)')
  if match['clean']:
    return AttackSpec(name, 'clean')
  if match['fgsm']:
    return AttackSpec(name, 'fgsm', steps=1)
  if match['pgd_steps'] is not None:
    return AttackSpec(name, 'pgd', 'l2' if match['pgd_l2'] else 'linf',
                      'dlr' if match['pgd_dlr'] else 'ce', steps=int(match['pgd_steps']),
                      random_start=True)
  if match['autoattack']:
    return AttackSpec(name, name, steps=AUTOATTACK_METHODS[name], random_start=True)
  for method in ('apgd_t', 'fab_t', 'square'):
    if match[method]:
      steps = match[f'{method}_steps']
      return AttackSpec(name, method, loss='dlr' if method == 'apgd_t' else 'ce',
                        steps=int(steps) if steps else AUTOATTACK_METHODS[method],
                        random_start=method != 'fab_t')
  steps = int(match['apgd_steps']) if match['apgd_steps'] else APGD_STEPS
  return AttackSpec(name, 'apgd', 'l2' if match['apgd_l2'] else 'linf', match['apgd_loss'],
                    steps=steps, random_start=True)


def as_spec(attack):
  """An `AttackSpec` for an attack name or spec."""
  return parse_attack(attack) if isinstance(attack, str) else attack
