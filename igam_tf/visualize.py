r"""Draws models' input gradients side by side as a PNG grid (the paper's Figure 1).

  python -m igam_tf.visualize --models=igam=runs/igam,pgd_at=runs/pgd_at/saved_model \
      --dataset=cifar10 --num_images=8 --output=grid.png

Rows are the first --num_images test images; the first column shows them, then one
column per model its cross-entropy input gradients on them, in inference mode, each
map scaled the same way (see igam_tf/visualization.py). A model is a trained model
folder, a SavedModel (through its input_gradients signature) or madry_mnist:PATH /
madry_cifar10:PATH; the model names head the columns.
"""

import os
from absl import app
from absl import flags

from igam_tf import data
from igam_tf import flag_groups
from igam_tf import model_sources
from igam_tf import visualization


def define_flags():
  flags.DEFINE_list('models', None, 'name=path pairs (a bare path is named after its folder): '
                    'trained model folders, SavedModels or madry_mnist:PATH / '
                    'madry_cifar10:PATH checkpoints, one column each.')
  flags.DEFINE_string('dataset', 'cifar10', f'One of {data.VALID_SPECS} (see igam_tf/data.py).')
  flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared.')
  flags.DEFINE_string('split', 'test', 'The split whose first images are drawn.')
  flags.DEFINE_list('classes', [], 'Keep only these class ids, relabelled 0..K-1.')
  flags.DEFINE_integer('image_size', None, 'Resize images to this square size.')
  flags.DEFINE_integer('num_images', 8, 'Rows of the grid.', lower_bound=1)
  flags.DEFINE_integer('zoom', None, 'Integer upscaling of each cell (unset: cells of at least '
                       f'{visualization.MIN_CELL_SIZE} pixels).', lower_bound=1)
  flags.DEFINE_string('output', None, 'The PNG file to write.')
  flags.mark_flags_as_required(['models', 'output'])


def parse_models(entries):
  """{name: source} from name=path entries (a bare path: named after its folder)."""
  sources = {}
  for entry in entries:
    name, _, path = (part.strip() for part in entry.partition('='))
    if not path:
      name, path = model_sources.default_name(entry.strip()), entry.strip()
    if name in sources:
      raise ValueError(f'--models names {name!r} twice')
    sources[name] = path
  return sources


def draw(f):
  """Draws the grid the flags `f` describe, writes it and returns its legend."""
  sources = parse_models(f.models)
  if os.path.isdir(f.output):
    raise ValueError(f'--output={f.output} is a folder: give the PNG file to write')
  flag_groups.check_writable('output', f.output, os.path.dirname(os.path.abspath(f.output)))
  split = data.load_dataset(f.dataset, f.split, data_dir=f.data_dir, image_size=f.image_size,
                            classes=f.classes)
  models = {}
  for name, source in sources.items():
    models[name] = model_sources.load(source, name)
    model_sources.check_fits(models[name], split.image_shape, split.num_classes)
  images, labels = next(iter(split.dataset.take(f.num_images).batch(f.num_images)))
  grid = visualization.gradient_grid({name: c.model for name, c in models.items()},
                                     images.numpy(), labels.numpy(), zoom=f.zoom)
  visualization.write_png(f.output, grid)
  legend = [f'Columns of {f.output} ({grid.shape[1]}x{grid.shape[0]} pixels, '
            f'{len(labels)} images of {f.dataset}:{f.split}):', '  image: the input']
  legend += [f'  {name}: input gradients of {c.kind} {c.source}' for name, c in models.items()]
  return '\n'.join(legend)


@flag_groups.reports_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  print(draw(flags.FLAGS))
  return 0


def run():
  """`python -m igam_tf.visualize`, also the console script `igam-visualize`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
