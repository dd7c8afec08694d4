"""IGAM (Chan, Tay and Ong, CVPR 2020) in TensorFlow 2 / Keras 3.

Binaries are verbs (`BINARIES`), run as `python -m igam_tf.<verb>` or as their console
scripts: each defines its flags, turns them into settings and calls the library; only
they (and `flag_groups`, their shared flags) read absl flags, and nothing imports them.
Library modules are nouns named after the paper's concepts (data, transforms, teacher,
igam, discriminator, attacks, evaluation, ...) and take settings objects, never flags.
"""

BINARIES = ('train_baseline', 'finetune_teacher', 'train_igam', 'evaluate', 'visualize',
            'export', 'demo')
