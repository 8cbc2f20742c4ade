"""Tests of dsacont.flagging (a package, so its test module names may repeat other packages')."""
