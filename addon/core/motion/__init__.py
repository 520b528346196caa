"""Motion maths, bpy-free: the Motion map, rotations, bone maps, retargeting and foot pinning.

- `rotations`: batched quaternion (w, x, y, z) and matrix maths.
- `motion`: decode/validate a PROTOCOL.md Motion map into a `Motion`, forward kinematics.
- `bone_maps`: canonical joint names, presets for common rigs, automatic mapping.
- `retarget`: rest-pose aligned retargeting onto a target rig (world bone directions), root
  motion scaled by leg length, pose bases for whole-fcurve writing.
- `footpin`: contact segments and a two-bone IK that pins feet on contact frames.
- `amass`: AMASS-style .npz (SMPL parameters or stored joints) to a Motion.
"""
