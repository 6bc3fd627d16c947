# gnuplot script: run in the output directory (bench/run.sh does); reads plot.dat.
set terminal pngcairo size 1400,700 noenhanced font ",10"
set output "results.png"
set title "lockext vs PostgreSQL alternatives and the floor (medians, cycles per second)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set rmargin 12
set bmargin 9
set logscale y
set yrange [100:*]
set ylabel "cycles/s (log scale)"
set xtics rotate by -35 scale 0
set key top right
set grid ytics
plot "plot.dat" using 2:xtic(1) title "1 client", "" using 3 title "8 clients", "" using 4 title "32 clients"
