"""Discrete noise processes (one module each) and the objective that trains any of them.

masked.py: MDLM (absorbing). gidd.py: GIDD+ (mask + uniform). hierarchical.py: HDLM (token -> cluster -> mask).
"""
