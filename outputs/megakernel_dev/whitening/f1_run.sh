source .devicekit/setup.sh >/dev/null 2>&1
export PYTHONPATH=lib:$PYTHONPATH
python3 -m pytest -m gpu tests/test_kernels.py -q -p no:cacheprovider -x 2>&1 | tail -5 > $OUT/gpu_kernels.log
LIB=.devwork/old/lib TAG=old VARIANTS=base,bg1 python3 .devwork/f1_dev.py > $OUT/old.log 2>&1
TAG=new VARIANTS=base,bg1 python3 .devwork/f1_dev.py > $OUT/new.log 2>&1
cat $OUT/gpu_kernels.log; grep -A8 "floor p50" $OUT/old.log $OUT/new.log; grep -n "Error\|error" $OUT/new.log | head
grep "head done" $OUT/old.log $OUT/new.log
