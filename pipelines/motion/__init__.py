"""`motion.recover`: video -> body motion in Blender's world (see recover.py)."""
